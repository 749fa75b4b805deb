// Small pieces every screen uses: navigation inside /admin/, loading with errors that say what to do, times,
// confirmation in the page (a real <dialog>, reachable by keyboard), and the notice strip.
import { type ReactNode, useCallback, useEffect, useRef, useState, useSyncExternalStore } from 'react';
import { useTranslation } from 'react-i18next';
import { ApiFailure, describe } from './api/client';

/** How soon a load that failed for a passing reason (network, 5xx) is tried again. */
const RECOVER_MS = 3_000;

const BASE = '/admin';

function subscribe(callback: () => void): () => void {
  window.addEventListener('popstate', callback);
  return () => window.removeEventListener('popstate', callback);
}

/** The path inside the console (`/`, `/bubbles/demo`, `/audit`). */
export function usePath(): string {
  const path = useSyncExternalStore(subscribe, () => window.location.pathname);
  const inner = path.startsWith(BASE) ? path.slice(BASE.length) : path;
  return inner === '' ? '/' : inner;
}

export function navigate(to: string): void {
  window.history.pushState(null, '', BASE + to);
  window.dispatchEvent(new PopStateEvent('popstate'));
  window.scrollTo(0, 0);
}

export function Link({ to, children, className }: { to: string; children: ReactNode; className?: string }) {
  return (
    <a
      href={BASE + to}
      className={className}
      onClick={(e) => {
        if (e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
        e.preventDefault();
        navigate(to);
      }}
    >
      {children}
    </a>
  );
}

export interface Loaded<T> {
  data: T | undefined;
  error: string | null;
  loading: boolean;
  reload: () => void;
}

/** Loads `fetcher()` now, when `deps` change (dropping the old answer), and every `refreshMs` if given (keeping it on screen meanwhile). */
export function useLoad<T>(fetcher: () => Promise<T>, deps: unknown[], refreshMs?: number): Loaded<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  const [transient, setTransient] = useState(false);
  const fetchRef = useRef(fetcher);
  fetchRef.current = fetcher;
  const lastDeps = useRef<unknown[] | null>(null);
  useEffect(() => {
    let live = true;
    // New parameters (a filter, a page, another bubble): what was shown answered another question, so it goes
    // until the new answer comes. A refresh of the same question keeps it on screen.
    const previous = lastDeps.current;
    if (previous !== null && (previous.length !== deps.length || deps.some((d, i) => !Object.is(d, previous[i])))) {
      setData(undefined);
    }
    lastDeps.current = deps;
    setLoading(true);
    fetchRef
      .current()
      .then((value) => {
        if (!live) return;
        setData(value);
        setError(null);
      })
      .catch((err: unknown) => {
        if (!live) return;
        setError(describe(err));
        setTransient(err instanceof TypeError || (err instanceof ApiFailure && err.status >= 500));
      })
      .finally(() => live && setLoading(false));
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  useEffect(() => {
    if (!refreshMs) return;
    const timer = window.setInterval(() => setTick((n) => n + 1), refreshMs);
    return () => window.clearInterval(timer);
  }, [refreshMs]);
  // An outage (network down, server or database unavailable) heals on its own: try again soon,
  // whatever the usual refresh, so the console recovers without anyone pressing "Try again".
  useEffect(() => {
    if (!error || !transient) return;
    const timer = window.setTimeout(() => setTick((n) => n + 1), Math.min(refreshMs ?? RECOVER_MS, RECOVER_MS));
    return () => window.clearTimeout(timer);
  }, [error, transient, refreshMs, tick]);
  const reload = useCallback(() => setTick((n) => n + 1), []);
  return { data, error, loading, reload };
}

/** An error in words: the server's own sentence, or what to do when the network failed. */
export function ErrorNote({ error, onRetry }: { error: string | null; onRetry?: () => void }) {
  const { t } = useTranslation();
  if (!error) return null;
  return (
    <div className="notice error" role="alert">
      <span>{error === 'network' ? t('error.network') : error}</span>
      {onRetry && (
        <button type="button" className="link" onClick={onRetry}>
          {t('action.retry')}
        </button>
      )}
    </div>
  );
}

/** A notice for the next screen (after an action that leaves this one), shown once. */
let flash: string | null = null;

export function flashNext(text: string): void {
  flash = text;
}

/** The notice left by the previous screen, if any (taken once, on the first render). */
export function useFlash(): string | null {
  const [text] = useState(() => {
    const taken = flash;
    flash = null;
    return taken;
  });
  return text;
}

export function Done({ text }: { text: string | null }) {
  if (!text) return null;
  return (
    <div className="notice done" role="status">
      {text}
    </div>
  );
}

/** Unix seconds as a local date and time. */
export function when(unix: number | null | undefined, lang: string): string {
  if (unix === null || unix === undefined) return '—';
  return new Date(unix * 1000).toLocaleString(lang === 'fr' ? 'fr-FR' : 'en-GB', {
    dateStyle: 'medium',
    timeStyle: 'short',
  });
}

/** "12 s ago", "3 min ago", "2 h ago", or a date. */
export function ago(unix: number | null | undefined, lang: string, now = Date.now() / 1000): string {
  if (unix === null || unix === undefined) return '—';
  const secs = Math.max(0, Math.round(now - unix));
  const rtf = new Intl.RelativeTimeFormat(lang, { numeric: 'auto', style: 'short' });
  if (secs < 60) return rtf.format(-secs, 'second');
  if (secs < 3600) return rtf.format(-Math.round(secs / 60), 'minute');
  if (secs < 86_400) return rtf.format(-Math.round(secs / 3600), 'hour');
  return when(unix, lang);
}

/** A confirmation asked in the page. Resolves true when the person confirms. */
export function useConfirm(): [(text: string, action: string) => Promise<boolean>, ReactNode] {
  const { t } = useTranslation();
  const ref = useRef<HTMLDialogElement>(null);
  const [ask, setAsk] = useState<{ text: string; action: string } | null>(null);
  const resolver = useRef<(yes: boolean) => void>(() => {});
  useEffect(() => {
    if (ask && ref.current && !ref.current.open) ref.current.showModal();
  }, [ask]);
  const close = (yes: boolean) => {
    ref.current?.close();
    setAsk(null);
    resolver.current(yes);
  };
  const confirm = (text: string, action: string) =>
    new Promise<boolean>((resolve) => {
      resolver.current = resolve;
      setAsk({ text, action });
    });
  const dialog = (
    <dialog ref={ref} className="confirm" onCancel={() => close(false)} aria-labelledby="confirm-text">
      {ask && (
        <>
          <p id="confirm-text">{ask.text}</p>
          <div className="row end">
            <button type="button" onClick={() => close(false)} autoFocus>
              {t('action.cancel')}
            </button>
            <button type="button" className="danger" onClick={() => close(true)}>
              {ask.action}
            </button>
          </div>
        </>
      )}
    </dialog>
  );
  return [confirm, dialog];
}

/** The link's QR code: an SVG the API made, shown as an image (never injected as markup). */
export function Qr({ svg, label }: { svg: string; label: string }) {
  return <img className="qr" src={`data:image/svg+xml;charset=utf-8,${encodeURIComponent(svg)}`} alt={label} />;
}
