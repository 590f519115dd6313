// The SDK compiles without DOM or Node typings, because mini-programs have neither; these are
// the only host globals every supported runtime has.
declare function setTimeout(fn: () => void, ms?: number): unknown;
declare function clearTimeout(handle: unknown): void;
declare const console: { warn(...args: unknown[]): void };
