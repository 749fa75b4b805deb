import { type FormEvent, useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { WorkerClient } from '../client';
import { Centered, Strength, passphraseBits } from '../components';

/** The shape the admin API gives invite fragments: `<bubble>.<token>`. The worker checks it again in wasm. */
const INVITE = /^[a-z0-9][a-z0-9-]{0,62}\.[A-Za-z0-9_-]{1,128}$/;

export function Enroll({ client, invite }: { client: WorkerClient; invite: string }) {
  const { t } = useTranslation();
  const [link, setLink] = useState(invite);
  const [passphrase, setPassphrase] = useState('');
  const [confirm, setConfirm] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const fragment = link.includes('#') ? link.slice(link.lastIndexOf('#') + 1) : link.trim();
  const valid = INVITE.test(fragment);
  const bubble = valid ? fragment.split('.')[0] : null;

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    if (!valid) return setError(t('enroll.badLink'));
    if (passphraseBits(passphrase) < 40) return setError(t('enroll.tooWeak'));
    if (passphrase !== confirm) return setError(t('enroll.mismatch'));
    setBusy(true);
    try {
      await client.send({ kind: 'enroll', link: fragment, passphrase });
      void navigator.storage?.persist?.();
      history.replaceState(null, '', '/');
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      setError(message.startsWith('enroll_refused') ? t('enroll.refused') : message.includes('invite') ? t('enroll.badLink') : message);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Centered>
      <h1>{t('enroll.title')}</h1>
      {invite === '' && <p>{t('enroll.noInvite')}</p>}
      {invite !== '' && !valid && (
        <p className="error" role="alert">
          {t('enroll.badLink')}
        </p>
      )}
      {bubble && <p>{t('enroll.intro', { bubble })}</p>}
      <form onSubmit={(e) => void submit(e)} className="form">
        {invite === '' && (
          <label>
            {t('enroll.link')}
            <input value={link} onChange={(e) => setLink(e.target.value)} autoComplete="off" spellCheck={false} />
          </label>
        )}
        <label>
          {t('enroll.passphrase')}
          <input type="password" value={passphrase} onChange={(e) => setPassphrase(e.target.value)} autoComplete="new-password" required />
        </label>
        <Strength passphrase={passphrase} />
        <label>
          {t('enroll.confirm')}
          <input type="password" value={confirm} onChange={(e) => setConfirm(e.target.value)} autoComplete="new-password" required />
        </label>
        <p className="muted small">{t('enroll.explain')}</p>
        {error && (
          <p className="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" className="primary" disabled={busy || !valid}>
          {busy ? t('enroll.working') : t('enroll.submit')}
        </button>
      </form>
    </Centered>
  );
}
