pip install -e '.[test]' && python -m pytest
