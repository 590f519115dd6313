import type { Host } from './host.js';

/**
 * Foreground/background hooks of every runtime, per channel: each channel subscribes on open and
 * unsubscribes when it ends, so nothing global outlives it (uniCloud's SSEChannel kept state that
 * one dead channel poisoned until the app restarted).
 */
export function watchLifecycle(host: Host, onShow: () => void, onHide: () => void): () => void {
  const undo: (() => void)[] = [];
  const mp = host.mp;
  if (mp && typeof mp.onAppShow === 'function' && typeof mp.onAppHide === 'function') {
    mp.onAppShow(onShow);
    mp.onAppHide(onHide);
    undo.push(() => {
      if (typeof mp.offAppShow === 'function') mp.offAppShow(onShow);
      if (typeof mp.offAppHide === 'function') mp.offAppHide(onHide);
    });
  }
  const doc = host.env.document;
  if (doc && typeof doc.addEventListener === 'function') {
    const onVisibility = () => (doc.visibilityState === 'hidden' ? onHide() : onShow());
    doc.addEventListener('visibilitychange', onVisibility);
    undo.push(() => doc.removeEventListener('visibilitychange', onVisibility));
  }
  const appState = host.env.AppState;
  if (appState && typeof appState.addEventListener === 'function') {
    const sub = appState.addEventListener('change', (s) => (s === 'active' ? onShow() : s === 'background' ? onHide() : undefined));
    undo.push(() => sub && sub.remove());
  }
  return () => {
    for (const fn of undo) fn();
  };
}
