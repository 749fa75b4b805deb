import { type ReactNode, useEffect, useState } from 'react';
import { useTranslation } from 'react-i18next';
import { LANGUAGES, setLanguage } from './i18n';

export function LanguageSwitch() {
  const { t, i18n } = useTranslation();
  return (
    <label className="language">
      <span className="sr-only">{t('language')}</span>
      <select value={i18n.language} onChange={(e) => setLanguage(e.target.value)} aria-label={t('language')}>
        {LANGUAGES.map((l) => (
          <option key={l} value={l}>
            {l === 'en' ? 'English' : 'Français'}
          </option>
        ))}
      </select>
    </label>
  );
}

/** A rough strength estimate: what a guesser would have to try, in bits. */
export function passphraseBits(p: string): number {
  if (p.length === 0) return 0;
  let pool = 0;
  if (/[a-z]/.test(p)) pool += 26;
  if (/[A-Z]/.test(p)) pool += 26;
  if (/[0-9]/.test(p)) pool += 10;
  if (/[^a-zA-Z0-9]/.test(p)) pool += 33;
  const unique = new Set(p).size;
  return Math.round(Math.log2(Math.max(pool, 2)) * Math.min(p.length, unique * 2));
}

export function Strength({ passphrase }: { passphrase: string }) {
  const { t } = useTranslation();
  const bits = passphraseBits(passphrase);
  const level = bits < 40 ? 'weak' : bits < 60 ? 'fair' : 'strong';
  return (
    <div className="strength" data-level={level}>
      <meter min={0} max={80} low={40} high={60} optimum={80} value={Math.min(bits, 80)} aria-label={t('enroll.strength')} />
      <span>{passphrase ? t(`strength.${level}`) : t('enroll.strengthHint')}</span>
    </div>
  );
}

export function initials(name: string): string {
  return name
    .split(/\s+/)
    .filter((w) => /^[\p{L}\p{N}]/u.test(w))
    .slice(0, 2)
    .map((w) => w[0]?.toUpperCase() ?? '')
    .join('');
}

/** The frame of the screens before the member's home: enroll, unlock, other tab, unsupported. */
export function Centered({ children }: { children: ReactNode }) {
  return (
    <main className="centered">
      <div className="card">
        <div className="brand" aria-hidden="true">
          PeerBubble
        </div>
        {children}
      </div>
      <LanguageSwitch />
    </main>
  );
}

/** Small line icons drawn in SVG (no icon font, no emoji font needed), hidden from assistive technology. */
export function Icon({ name }: { name: 'attach' | 'file' }) {
  return (
    <svg className="icon" viewBox="0 0 24 24" width="18" height="18" aria-hidden="true" focusable="false">
      {name === 'attach' ? (
        <path d="M16.5 6.5v10a4.5 4.5 0 0 1-9 0V5a3 3 0 0 1 6 0v10.5a1.5 1.5 0 0 1-3 0V6.5" fill="none" stroke="currentColor" strokeWidth="1.8" strokeLinecap="round" />
      ) : (
        <path d="M6 2.5h8l4.5 4.5v14.5H6zM14 2.5V7h4.5" fill="none" stroke="currentColor" strokeWidth="1.8" strokeLinejoin="round" />
      )}
    </svg>
  );
}

/**
 * Asks before something that cannot be undone, inside the page (a browser `confirm()` blocks the worker's
 * updates and cannot be styled or translated). Escape or the backdrop cancel; the safe choice has the focus.
 */
export function ConfirmDialog(props: { title: string; body: string; confirm: string; onConfirm: () => void; onCancel: () => void }) {
  const { t } = useTranslation();
  return (
    <div className="dialog-backdrop" onClick={(e) => e.target === e.currentTarget && props.onCancel()}>
      <div
        className="dialog"
        role="alertdialog"
        aria-modal="true"
        aria-label={props.title}
        onKeyDown={(e) => {
          if (e.key === 'Escape') props.onCancel();
        }}
      >
        <h2>{props.title}</h2>
        <p>{props.body}</p>
        <div className="row">
          <button type="button" autoFocus onClick={props.onCancel}>
            {t('cancel')}
          </button>
          <button type="button" className="danger" onClick={props.onConfirm}>
            {props.confirm}
          </button>
        </div>
      </div>
    </div>
  );
}

/** A masked item shown for this long once the member asked to see it, then hidden again. */
export const REVEAL_MS = 15_000;

/** Whether a masked item is shown now, and how to show it (for {@link REVEAL_MS}). */
export function useReveal(): [boolean, () => void] {
  const [revealed, setRevealed] = useState(false);
  useEffect(() => {
    if (!revealed) return;
    const timer = setTimeout(() => setRevealed(false), REVEAL_MS);
    return () => clearTimeout(timer);
  }, [revealed]);
  return [revealed, () => setRevealed(true)];
}
