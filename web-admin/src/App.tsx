// The console's frame: who is signed in (and with which role), the navigation, the language, and the screen for
// the current path. A session that ends (expired, signed out elsewhere, database back after a restart) brings
// the sign-in page back with the reason, and nothing typed elsewhere is lost because nothing is kept here.
import { useCallback, useEffect, useState } from 'react';
import { useTranslation } from 'react-i18next';
import { type Session, api, ok, setCsrf, whenSignedOut } from './api/client';
import { LANGUAGES, setLanguage } from './i18n';
import { AuditScreen } from './screens/Audit';
import { BubbleScreen } from './screens/Bubble';
import { BubblesScreen } from './screens/Bubbles';
import { SignIn } from './screens/SignIn';
import { Link, usePath } from './ui';

export type Role = 'admin' | 'auditor';

/** What the signed-in person may do: the API refuses the rest anyway; the console does not offer it. */
export interface Who {
  name: string;
  role: Role;
  /** Changes allowed at all (admins). */
  canChange: boolean;
  /** Organisation-wide: create bubbles. */
  orgAdmin: boolean;
  /** Scope covers every bubble. */
  allBubbles: boolean;
}

function whoOf(session: Session): Who {
  const role: Role = session.role === 'admin' ? 'admin' : 'auditor';
  return { name: session.name, role, canChange: role === 'admin', orgAdmin: role === 'admin' && session.bubbles.includes('*'), allBubbles: session.bubbles.includes('*') };
}

export function App() {
  const { t, i18n } = useTranslation();
  const path = usePath();
  const [who, setWho] = useState<Who | null>(null);
  const [checking, setChecking] = useState(true);
  const [reason, setReason] = useState<string | null>(null);

  const load = useCallback(async () => {
    setChecking(true);
    try {
      const answer = await api.GET('/auth/session');
      if (answer.data) {
        setCsrf(answer.data.csrf_token);
        setWho(whoOf(answer.data));
        setReason(null);
      } else {
        setWho(null);
      }
    } catch {
      setWho(null);
      setReason('network');
    } finally {
      setChecking(false);
    }
  }, []);

  useEffect(() => {
    void load();
    whenSignedOut((code) => {
      setWho(null);
      setReason(code === 'session_expired' ? 'expired' : 'signed_out');
    });
  }, [load]);

  useEffect(() => {
    document.title = t('title');
  }, [t, i18n.language]);

  const signOut = async () => {
    ok(await api.POST('/auth/logout'));
    setCsrf('');
    setWho(null);
    setReason(null);
  };

  let screen;
  if (checking && !who) screen = <p className="muted center">{t('loading')}</p>;
  else if (!who) screen = <SignIn reason={reason} onSignedIn={load} />;
  else if (path === '/' || path === '/bubbles') screen = <BubblesScreen who={who} />;
  else if (path.startsWith('/bubbles/')) {
    const [, , id, tab] = path.split('/');
    screen = <BubbleScreen who={who} id={decodeURIComponent(id ?? '')} tab={tab ?? 'health'} />;
  } else if (path === '/audit') screen = <AuditScreen who={who} />;
  else screen = <p className="notice">{t('notFound')}</p>;

  return (
    <>
      <header className="top">
        <Link to="/" className="brand">
          {t('brand')}
        </Link>
        {who && (
          <nav aria-label={t('nav.label')}>
            <Link to="/" className={path === '/' || path.startsWith('/bubbles') ? 'current' : ''}>
              {t('nav.bubbles')}
            </Link>
            <Link to="/audit" className={path === '/audit' ? 'current' : ''}>
              {t('nav.audit')}
            </Link>
          </nav>
        )}
        <div className="grow" />
        <label className="lang">
          <span className="sr-only">{t('language')}</span>
          <select value={i18n.language} onChange={(e) => setLanguage(e.target.value)}>
            {LANGUAGES.map((l) => (
              <option key={l} value={l}>
                {l === 'fr' ? 'Français' : 'English'}
              </option>
            ))}
          </select>
        </label>
        {who && (
          <div className="who">
            <span>
              {who.name} · <strong>{t(`role.${who.role}`)}</strong>
            </span>
            <button type="button" className="link" onClick={() => void signOut()}>
              {t('action.signOut')}
            </button>
          </div>
        )}
      </header>
      {who && who.role === 'auditor' && <div className="banner">{t('role.auditorBanner')}</div>}
      <main>{screen}</main>
      <footer className="muted">{t('footer')}</footer>
    </>
  );
}
