import QRCode from 'qrcode';
import { useEffect, useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { WorkerClient } from '../client';
import type { DirectoryEntry } from '../protocol';

/** The 60-digit number both members compute from their two public keys; equal numbers mean no substituted key. */
export function SafetyNumber(props: { client: WorkerClient; entry: DirectoryEntry; me: string; onClose: () => void }) {
  const { t } = useTranslation();
  const { client, entry } = props;
  const [digits, setDigits] = useState<string | null>(null);
  const [qr, setQr] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    client
      .send({ kind: 'safetyNumber', member: entry.member })
      .then(async (value) => {
        if (typeof value !== 'string' || !/^[0-9]{60}$/.test(value)) throw new Error('unexpected safety number');
        setDigits(value);
        setQr(await QRCode.toDataURL(value, { errorCorrectionLevel: 'M', margin: 2, width: 220 }));
      })
      .catch((e: Error) => setError(e.message));
  }, [client, entry.member]);
  const groups = digits?.match(/.{5}/g) ?? [];
  return (
    <div className="dialog-backdrop">
      <div className="dialog" role="dialog" aria-modal="true" aria-label={t('safety.title')}>
        <h2>{t('safety.title')}</h2>
        <p>{t('safety.explain', { name: entry.displayName })}</p>
        {entry.keyChanged && (
          <p className="banner warn" role="alert">
            {t('safety.changed', { name: entry.displayName })}
          </p>
        )}
        {error && <p className="error" role="alert">{error}</p>}
        {digits && (
          <div className="safety">
            <p className="digits" data-testid="safety-number" aria-label={digits}>
              {groups.map((g, i) => (
                <span key={i}>{g}</span>
              ))}
            </p>
            {qr && <img src={qr} alt={t('safety.qr')} width={220} height={220} />}
          </div>
        )}
        <p className="muted small">{entry.verified ? t('safety.isVerified') : t('safety.notVerified')}</p>
        <div className="row">
          <button type="button" onClick={props.onClose}>
            {t('close')}
          </button>
          <button
            type="button"
            className="primary"
            onClick={() =>
              void client
                .send({ kind: 'setVerified', member: entry.member, verified: !entry.verified || entry.keyChanged })
                .then(props.onClose)
                .catch((e: Error) => setError(e.message))
            }
          >
            {entry.verified && !entry.keyChanged ? t('safety.unmark') : t('safety.mark')}
          </button>
        </div>
      </div>
    </div>
  );
}
