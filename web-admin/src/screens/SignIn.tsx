// Sign-in: with the organisation's identity provider when the API has one, or with a token (the bootstrap
// token `peerbubble up` prints, or a scoped API token), which the API turns into the same HttpOnly session.
import { type FormEvent, useState } from 'react';
import { useTranslation } from 'react-i18next';
import { api, describe } from '../api/client';
import { ErrorNote, useLoad } from '../ui';

export function SignIn({ reason, onSignedIn }: { reason: string | null; onSignedIn: () => Promise<void> }) {
  const { t } = useTranslation();
  const [token, setToken] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const methods = useLoad(async () => (await api.GET('/auth/methods')).data ?? { oidc: false }, []);
  // The provider's answer, when the sign-in it started was refused (the API sent the browser back here).
  const [providerError] = useState(() => {
    const code = new URLSearchParams(window.location.search).get('sign_in_error');
    if (code) window.history.replaceState(null, '', window.location.pathname);
    return code;
  });

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const answer = await api.POST('/auth/token', { body: { token } });
      if (!answer.response.ok) {
        const body = answer.error as { message?: string } | undefined;
        setError(body?.message ?? t('signIn.refused'));
        return;
      }
      setToken('');
      await onSignedIn();
    } catch (err) {
      setError(describe(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <section className="card narrow" aria-labelledby="sign-in-title">
      <h1 id="sign-in-title">{t('signIn.title')}</h1>
      <p className="muted">{t('signIn.intro')}</p>
      {reason && <div className="notice warn">{t(`signIn.reason.${reason}`)}</div>}
      {providerError && (
        <div className="notice error" role="alert">
          {t([`signIn.providerError.${providerError}`, 'signIn.providerError.other'], { code: providerError })}
        </div>
      )}
      {methods.data?.oidc && (
        <p>
          <a className="button primary wide" href="/auth/login">
            {t('signIn.oidc')}
          </a>
        </p>
      )}
      <form onSubmit={(e) => void submit(e)}>
        <label htmlFor="token">{t('signIn.token')}</label>
        <input
          id="token"
          type="password"
          autoComplete="off"
          spellCheck={false}
          value={token}
          onChange={(e) => setToken(e.target.value)}
          required
        />
        <p className="hint">{t('signIn.tokenHint')}</p>
        <ErrorNote error={error} />
        <button type="submit" className={methods.data?.oidc ? '' : 'primary'} disabled={busy || token.trim() === ''}>
          {busy ? t('signIn.busy') : t('signIn.submit')}
        </button>
      </form>
      <details className="cannot">
        <summary>{t('cannot.title')}</summary>
        <ul>
          <li>{t('cannot.read')}</li>
          <li>{t('cannot.reset')}</li>
          <li>{t('cannot.master')}</li>
        </ul>
      </details>
    </section>
  );
}
