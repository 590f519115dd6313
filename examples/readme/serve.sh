python -m broker serve
