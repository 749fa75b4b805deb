import { useEffect, useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { WorkerClient } from './client';
import { Centered } from './components';
import { Enroll } from './screens/Enroll';
import { Home } from './screens/Home';
import { Unlock } from './screens/Unlock';

/** Locks after this long without a key press, click or touch. */
const IDLE_LOCK_MS = 5 * 60 * 1000;

export function App({ client }: { client: WorkerClient }) {
  const { t } = useTranslation();
  const [, force] = useState(0);
  useEffect(() => client.subscribe(() => force((n) => n + 1)), [client]);
  const phase = client.phase;

  useEffect(() => {
    if (phase.phase !== 'open') return;
    let timer = setTimeout(() => void client.send({ kind: 'lock' }), IDLE_LOCK_MS);
    const activity = () => {
      clearTimeout(timer);
      timer = setTimeout(() => void client.send({ kind: 'lock' }), IDLE_LOCK_MS);
    };
    const events = ['keydown', 'pointerdown', 'touchstart'] as const;
    for (const e of events) window.addEventListener(e, activity);
    return () => {
      clearTimeout(timer);
      for (const e of events) window.removeEventListener(e, activity);
    };
  }, [phase.phase, client]);

  const invite = window.location.pathname.endsWith('/enroll') ? window.location.hash.slice(1) : '';
  switch (phase.phase) {
    case 'starting':
      return <Centered><p role="status" className="muted">{t('starting')}</p></Centered>;
    case 'otherTab':
      return (
        <Centered>
          <h1>{t('otherTab.title')}</h1>
          <p>{t('otherTab.body')}</p>
        </Centered>
      );
    case 'unsupported':
      return (
        <Centered>
          <h1>{t('unsupported.title')}</h1>
          <p>{t('unsupported.body')}</p>
          <p className="muted small">{phase.reason}</p>
        </Centered>
      );
    case 'enroll':
      return <Enroll client={client} invite={invite} />;
    case 'locked':
      return <Unlock client={client} bubble={phase.bubble} retryAt={phase.retryAt} securityKey={phase.securityKey} inviteIgnored={invite !== ''} />;
    case 'open':
      return client.view ? <Home client={client} view={client.view} notices={client.notices} /> : <Centered><p role="status">{t('starting')}</p></Centered>;
  }
}

/**
 * Plain HTTP from another machine: the browser withholds Web Crypto and Web Locks, so nothing could be kept safe.
 * Shown instead of starting the worker, which would store nothing usable.
 */
export function Insecure() {
  const { t } = useTranslation();
  const https = `https://${window.location.host}${window.location.pathname}${window.location.hash}`;
  return (
    <Centered>
      <h1>{t('insecure.title')}</h1>
      <p>{t('insecure.body')}</p>
      <p><a href={https}>{t('insecure.action')}</a></p>
      <p className="muted small">{t('insecure.admin')}</p>
    </Centered>
  );
}
