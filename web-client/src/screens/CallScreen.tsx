// The call screen: an incoming call (who, whether their key was verified; accept or decline), a call being
// set up, the call itself (the contact's video or voice, our own preview; microphone, camera, hang up), and why
// the last call ended.
import { useEffect, useRef } from 'react';
import { useTranslation } from 'react-i18next';
import type { WorkerClient } from '../client';
import type { View } from '../protocol';

/** Plays `tracks` (one stream per element, kept across renders: a new stream each time would restart it). */
function Media({ tracks, muted, video, label, kind }: { tracks: MediaStreamTrack[]; muted: boolean; video: boolean; label: string; kind: 'remote' | 'self' | 'screen' }) {
  const ref = useRef<HTMLVideoElement & HTMLAudioElement>(null);
  const stream = useRef<MediaStream | null>(null);
  useEffect(() => {
    stream.current ??= new MediaStream();
    const s = stream.current;
    for (const t of s.getTracks()) if (!tracks.includes(t)) s.removeTrack(t);
    for (const t of tracks) if (!s.getTracks().includes(t)) s.addTrack(t);
    const el = ref.current;
    if (el && el.srcObject !== s) el.srcObject = s;
  });
  return video ? (
    <video ref={ref} className={kind} autoPlay playsInline muted={muted} aria-label={label} />
  ) : (
    <audio ref={ref} autoPlay muted={muted} aria-label={label} />
  );
}

export function CallScreen({ client, view }: { client: WorkerClient; view: View }) {
  const { t } = useTranslation();
  const calls = client.calls;
  const call = calls.call;
  const ended = calls.ended;
  const entry = (peer: string) => view.directory.find((e) => e.member === peer);
  const act = (f: () => Promise<void>) => void f().catch(() => undefined);

  if (!call && ended) {
    return (
      <div className="banner call-ended" role="status">
        {t(`call.ended.${ended.why}`, { name: entry(ended.peer)?.displayName ?? t('unknownMember') })}{' '}
        <button type="button" onClick={() => calls.dismiss()}>
          {t('close')}
        </button>
      </div>
    );
  }
  if (!call) return null;
  const contact = entry(call.peer);
  const name = contact?.displayName ?? t('unknownMember');
  const remote = client.links.remoteStream(call.peer);
  // The contact's camera and microphone are their first tracks; a further video track is their shared screen.
  const videos = remote?.getVideoTracks().filter((v) => v.readyState === 'live') ?? [];
  const remoteCamera = [...(remote?.getAudioTracks() ?? []), ...videos.slice(0, 1)];
  const remoteScreen = videos.slice(1, 2);

  if (call.phase === 'incoming') {
    return (
      <div className="dialog-backdrop">
        <div className="dialog call incoming" role="dialog" aria-modal="true" aria-label={t('call.incomingTitle')}>
          <h2>{t(call.video ? 'call.incomingVideo' : 'call.incomingAudio', { name })}</h2>
          {contact?.keyChanged ? (
            <p className="banner warn">{t('safety.changed', { name })}</p>
          ) : (
            <p className={`tag ${contact?.verified ? 'ok' : ''}`}>{contact?.verified ? t('call.verified') : t('call.notVerified')}</p>
          )}
          <div className="row">
            <button type="button" className="danger" onClick={() => act(() => calls.decline())}>
              {t('call.decline')}
            </button>
            <button type="button" className="primary" autoFocus onClick={() => act(() => calls.accept())}>
              {t('call.accept')}
            </button>
          </div>
        </div>
      </div>
    );
  }

  const status =
    call.phase === 'ringing' ? t('call.ringing', { name }) : call.phase === 'connecting' ? t('call.connecting', { name }) : t('call.active', { name });
  return (
    <section className={`call-screen ${call.video ? 'video' : 'audio'}`} aria-label={t('call.title', { name })}>
      <p className="call-status" role="status">
        {status}
      </p>
      <div className="call-media">
        <Media kind="remote" tracks={remoteCamera} muted={false} video={call.video} label={t('call.remoteMedia', { name })} />
        {call.video && <Media kind="self" tracks={call.local?.getVideoTracks() ?? []} muted video label={t('call.ownCamera')} />}
      </div>
      {remoteScreen.length > 0 && (
        <div className="call-media screen">
          <Media kind="screen" tracks={remoteScreen} muted video label={t('call.remoteScreen', { name })} />
        </div>
      )}
      <div className="call-actions">
        <button type="button" aria-pressed={!call.micOn} onClick={() => act(() => calls.toggleMic())}>
          {call.micOn ? t('call.mute') : t('call.unmute')}
        </button>
        {call.video && (
          <button type="button" aria-pressed={!call.camOn} onClick={() => act(() => calls.toggleCamera())}>
            {call.camOn ? t('call.cameraOff') : t('call.cameraOn')}
          </button>
        )}
        {call.phase === 'active' && (
          <button type="button" aria-pressed={call.screen !== null} onClick={() => act(() => calls.toggleScreen())}>
            {call.screen ? t('call.stopSharing') : t('call.shareScreen')}
          </button>
        )}
        <button type="button" className="danger hangup" onClick={() => act(() => calls.hangUp())}>
          {t('call.hangUp')}
        </button>
      </div>
    </section>
  );
}
