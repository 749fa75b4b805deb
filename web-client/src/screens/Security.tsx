import { type FormEvent, useEffect, useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { WorkerClient } from '../client';
import { Strength, passphraseBits } from '../components';
import { type NewSecurityKey, type SecurityKeyRef, parseProtection } from '../protocol';
import { SecurityKeyError, addSecurityKey, securityKeyPossible, securityKeySecret, wipe } from '../securityKey';

type KeyChoice = 'keep' | 'remove' | 'add';
type Busy = 'current' | 'new' | 'saving' | null;

/**
 * What protects the keys on this device: the passphrase and, if the member added one, a security key. Changing
 * them re-encrypts the key store here; the member's identity, contacts and history stay as they are, and nobody
 * else sees a change. The current passphrase is asked first: an unlocked screen left alone is not enough.
 */
export function Security(props: { client: WorkerClient; label: string; onClose: () => void }) {
  const { t } = useTranslation();
  const { client } = props;
  const [current, setCurrent] = useState<SecurityKeyRef | null | undefined>(undefined);
  const [passphrase, setPassphrase] = useState('');
  const [changePassphrase, setChangePassphrase] = useState(false);
  const [fresh, setFresh] = useState('');
  const [confirm, setConfirm] = useState('');
  const [keyChoice, setKeyChoice] = useState<KeyChoice>('keep');
  const [busy, setBusy] = useState<Busy>(null);
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const keyPossible = securityKeyPossible();

  // Escape closes the dialog wherever the focus is (after a save it may be on nothing), unless a change is running.
  const { onClose } = props;
  useEffect(() => {
    if (busy !== null) return;
    const onKey = (e: KeyboardEvent) => {
      if (e.key === 'Escape') onClose();
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [busy, onClose]);

  useEffect(() => {
    client
      .send({ kind: 'protection' })
      .then((value) => {
        const parsed = parseProtection(value);
        if (!parsed) throw new Error('unexpected answer from the worker');
        setCurrent(parsed.securityKey);
      })
      .catch((e: Error) => setError(e.message));
  }, [client]);

  const hasKey = current != null;
  const changesKey = keyChoice !== 'keep';
  const nothing = !changePassphrase && !changesKey;

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    setDone(null);
    if (nothing) return setError(t('security.nothing'));
    if (changePassphrase && passphraseBits(fresh) < 40) return setError(t('enroll.tooWeak'));
    if (changePassphrase && fresh !== confirm) return setError(t('enroll.mismatch'));
    if (changePassphrase && fresh === passphrase) return setError(t('security.same'));
    let securitySecret: Uint8Array | undefined;
    let added: NewSecurityKey | undefined;
    try {
      // The current key first (it proves the member holds it), then the new one.
      if (current) {
        setBusy('current');
        try {
          securitySecret = await securityKeySecret(current);
        } catch (err) {
          return setError(t(`securityKey.unlock.${err instanceof SecurityKeyError ? err.problem : 'failed'}`));
        }
      }
      if (keyChoice === 'add') {
        setBusy('new');
        try {
          added = await addSecurityKey(props.label);
        } catch (err) {
          return setError(t(`securityKey.${err instanceof SecurityKeyError ? err.problem : 'failed'}`));
        }
      }
      setBusy('saving');
      const answer = parseProtection(
        await client.send({
          kind: 'changeProtection',
          passphrase,
          securitySecret,
          newPassphrase: changePassphrase ? fresh : '',
          securityKey: added ?? (keyChoice === 'remove' ? 'remove' : 'keep'),
        }),
      );
      if (!answer) throw new Error('unexpected answer from the worker');
      setCurrent(answer.securityKey);
      setDone(
        keyChoice === 'add' ? t('security.doneKeyAdded') : keyChoice === 'remove' ? t('security.doneKeyRemoved') : t('security.donePassphrase'),
      );
      setPassphrase('');
      setFresh('');
      setConfirm('');
      setChangePassphrase(false);
      setKeyChoice('keep');
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      setError(
        message.startsWith('wrong_segments')
          ? t(hasKey ? 'security.wrongWithKey' : 'security.wrong')
          : message.startsWith('wait')
            ? t('unlock.wait')
            : message.startsWith('hardware_key_needed')
              ? t('securityKey.unlock.needed')
              : message,
      );
    } finally {
      wipe(securitySecret);
      wipe(added?.secret);
      setBusy(null);
    }
  };

  return (
    <div className="dialog-backdrop">
      <div
        className="dialog wide"
        role="dialog"
        aria-modal="true"
        aria-labelledby="security-title"
      >
        <h2 id="security-title">{t('security.title')}</h2>
        <p>{t('security.explain')}</p>
        {current === undefined && !error && (
          <p className="muted" role="status">
            {t('security.loading')}
          </p>
        )}
        {current !== undefined && (
          <form onSubmit={(e) => void submit(e)} className="form">
            <p className="status-line" data-testid="protection-status">
              {hasKey ? t('security.statusKey') : t('security.statusPassphrase')}
            </p>
            <label>
              {t('security.current')}
              <input
                type="password"
                value={passphrase}
                onChange={(e) => setPassphrase(e.target.value)}
                autoComplete="current-password"
                autoFocus
                required
              />
            </label>
            <fieldset>
              <legend>{t('security.passphrase')}</legend>
              <label className="check">
                <input type="checkbox" checked={changePassphrase} onChange={(e) => setChangePassphrase(e.target.checked)} />
                {t('security.changePassphrase')}
              </label>
              {changePassphrase && (
                <>
                  <label>
                    {t('security.new')}
                    <input type="password" value={fresh} onChange={(e) => setFresh(e.target.value)} autoComplete="new-password" required />
                  </label>
                  <Strength passphrase={fresh} />
                  <label>
                    {t('enroll.confirm')}
                    <input type="password" value={confirm} onChange={(e) => setConfirm(e.target.value)} autoComplete="new-password" required />
                  </label>
                </>
              )}
            </fieldset>
            <fieldset>
              <legend>{t('security.key')}</legend>
              <label className="check">
                <input type="radio" name="key" checked={keyChoice === 'keep'} onChange={() => setKeyChoice('keep')} />
                {hasKey ? t('security.keepKey') : t('security.noKey')}
              </label>
              {hasKey && (
                <label className="check">
                  <input type="radio" name="key" checked={keyChoice === 'remove'} onChange={() => setKeyChoice('remove')} />
                  {t('security.removeKey')}
                </label>
              )}
              {!hasKey && keyPossible && (
                <label className="check">
                  <input type="radio" name="key" checked={keyChoice === 'add'} onChange={() => setKeyChoice('add')} />
                  {t('security.addKey')}
                </label>
              )}
              {!hasKey && !keyPossible && <p className="muted small">{t('security.keyUnavailable')}</p>}
              {keyChoice === 'add' && <p className="muted small">{t('securityKey.addWarning')}</p>}
              {keyChoice === 'remove' && <p className="notice small">{t('security.removeWarning')}</p>}
            </fieldset>
            {error && (
              <p className="error" role="alert">
                {error}
              </p>
            )}
            {done && (
              <p className="ok" role="status">
                {done}
              </p>
            )}
            {(busy === 'current' || busy === 'new') && (
              <p className="notice" role="status">
                {t(busy === 'current' ? 'security.touchCurrent' : 'securityKey.touch')}
              </p>
            )}
            <div className="row">
              <button type="button" onClick={props.onClose} disabled={busy !== null}>
                {t('close')}
              </button>
              <button type="submit" className="primary" disabled={busy !== null || nothing}>
                {busy === 'saving' ? t('security.saving') : busy ? t('securityKey.waiting') : t('security.save')}
              </button>
            </div>
          </form>
        )}
        {current === undefined && error && (
          <>
            <p className="error" role="alert">
              {error}
            </p>
            <div className="row">
              <button type="button" onClick={props.onClose}>
                {t('close')}
              </button>
            </div>
          </>
        )}
      </div>
    </div>
  );
}
