import type { Host } from './host.js';

export interface LifecycleHandlers {
  show(): void;
  hide(): void;
  /** The network is back: a line that waited on backoff (or died unnoticed) reconnects now. */
  online(): void;
}

/**
 * Foreground/background and network hooks of every runtime, per channel: each channel subscribes
 * on open and unsubscribes when it ends, so nothing global outlives it (uniCloud's SSEChannel kept
 * state that one dead channel poisoned until the app restarted).
 */
export function watchLifecycle(host: Host, on: LifecycleHandlers): () => void {
  const undo: (() => void)[] = [];
  const { show, hide, online } = on;
  const mp = host.mp;
  if (mp && typeof mp.onAppShow === 'function' && typeof mp.onAppHide === 'function') {
    mp.onAppShow(show);
    mp.onAppHide(hide);
    undo.push(() => {
      if (typeof mp.offAppShow === 'function') mp.offAppShow(show);
      if (typeof mp.offAppHide === 'function') mp.offAppHide(hide);
    });
  }
  if (mp && typeof mp.onNetworkStatusChange === 'function') {
    // uni/wx `onNetworkStatusChange(cb({isConnected, networkType}))`; `off…` since wx 2.9.3.
    const onNet = (res: { isConnected?: boolean }) => {
      if (res && res.isConnected) online();
    };
    mp.onNetworkStatusChange(onNet);
    undo.push(() => {
      if (typeof mp.offNetworkStatusChange === 'function') mp.offNetworkStatusChange(onNet);
    });
  }
  const doc = host.env.document;
  if (doc && typeof doc.addEventListener === 'function') {
    const onVisibility = () => (doc.visibilityState === 'hidden' ? hide() : show());
    doc.addEventListener('visibilitychange', onVisibility);
    undo.push(() => doc.removeEventListener('visibilitychange', onVisibility));
  }
  const win = host.env.window;
  if (win && typeof win.addEventListener === 'function') {
    // Browsers fire `online` when the OS reports connectivity again (HTML: navigator.onLine).
    win.addEventListener('online', online);
    undo.push(() => win.removeEventListener('online', online));
  }
  const appState = host.env.AppState;
  if (appState && typeof appState.addEventListener === 'function') {
    const sub = appState.addEventListener('change', (s) => (s === 'active' ? show() : s === 'background' ? hide() : undefined));
    undo.push(() => sub && sub.remove());
  }
  return () => {
    for (const fn of undo) fn();
  };
}
