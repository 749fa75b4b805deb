import { type FormEvent, useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { WorkerClient } from '../client';
import { Centered, Strength, passphraseBits } from '../components';
import type { NewSecurityKey } from '../protocol';
import { SecurityKeyError, addSecurityKey, securityKeyPossible, wipe } from '../securityKey';

/** The shape the admin API gives invite fragments: `<bubble>.<token>`. The worker checks it again in wasm. */
const INVITE = /^[a-z0-9][a-z0-9-]{0,62}\.[A-Za-z0-9_-]{1,128}$/;

export function Enroll({ client, invite }: { client: WorkerClient; invite: string }) {
  const { t } = useTranslation();
  const [link, setLink] = useState(invite);
  const [passphrase, setPassphrase] = useState('');
  const [confirm, setConfirm] = useState('');
  const [withKey, setWithKey] = useState(false);
  const [busy, setBusy] = useState<'key' | 'keys' | null>(null);
  const [error, setError] = useState<string | null>(null);
  const keyPossible = securityKeyPossible();
  const fragment = link.includes('#') ? link.slice(link.lastIndexOf('#') + 1) : link.trim();
  const valid = INVITE.test(fragment);
  const bubble = valid ? fragment.split('.')[0] : null;

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    if (!valid) return setError(t('enroll.badLink'));
    if (passphraseBits(passphrase) < 40) return setError(t('enroll.tooWeak'));
    if (passphrase !== confirm) return setError(t('enroll.mismatch'));
    // The security key first: if it cannot be used, the invite is still unused and the member chooses again.
    let securityKey: NewSecurityKey | undefined;
    if (withKey) {
      setBusy('key');
      try {
        securityKey = await addSecurityKey(`${bubble ?? 'PeerBubble'}`);
      } catch (err) {
        setBusy(null);
        const problem = err instanceof SecurityKeyError ? err.problem : 'failed';
        return setError(t(`securityKey.${problem}`));
      }
    }
    setBusy('keys');
    try {
      await client.send({ kind: 'enroll', link: fragment, passphrase, securityKey });
      void navigator.storage?.persist?.();
      history.replaceState(null, '', '/');
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      setError(message.startsWith('enroll_refused') ? t('enroll.refused') : message.includes('invite') ? t('enroll.badLink') : message);
    } finally {
      wipe(securityKey?.secret);
      setBusy(null);
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
        {keyPossible && (
          <div className="option">
            <label className="check">
              <input type="checkbox" checked={withKey} onChange={(e) => setWithKey(e.target.checked)} />
              {t('securityKey.add')}
            </label>
            <p className="muted small">{withKey ? t('securityKey.addWarning') : t('securityKey.addExplain')}</p>
          </div>
        )}
        {error && (
          <p className="error" role="alert">
            {error}
          </p>
        )}
        {busy === 'key' && (
          <p className="notice" role="status">
            {t('securityKey.touch')}
          </p>
        )}
        <button type="submit" className="primary" disabled={busy !== null || !valid}>
          {busy === 'keys' ? t('enroll.working') : busy === 'key' ? t('securityKey.waiting') : t('enroll.submit')}
        </button>
      </form>
    </Centered>
  );
}
