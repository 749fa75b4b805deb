// The call screen: an incoming call (who, whether their key was verified; accept or decline), a call being
// set up, the call itself (the contact's video or voice, our own preview; microphone, camera, hang up), and why
// the last call ended.
import { useEffect, useRef, useState } from 'react';
import { useTranslation } from 'react-i18next';
import { groupLimit } from '../calls';
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
  const nameOf = (peer: string) => entry(peer)?.displayName ?? t('unknownMember');
  const groupName = (id: string | null) => (id ? (view.conversations.find((c) => c.id === id)?.name ?? t('unknownMember')) : null);
  const act = (f: () => Promise<void>) => void f().catch(() => undefined);

  if (!call && ended) {
    const group = groupName(ended.group);
    return (
      <div className="banner call-ended" role="status">
        {group ? t(`call.groupEnded.${ended.why}`, { group }) : t(`call.ended.${ended.why}`, { name: nameOf(ended.peer) })}{' '}
        <button type="button" onClick={() => calls.dismiss()}>
          {t('close')}
        </button>
      </div>
    );
  }
  if (!call) return null;
  const contact = entry(call.peer);
  const group = groupName(call.group);
  const name = group ?? contact?.displayName ?? t('unknownMember');
  const limit = groupLimit(call.video);

  if (call.phase === 'incoming') {
    const full = call.group !== null && call.others.length >= limit;
    return (
      <div className="dialog-backdrop">
        <div className="dialog call incoming" role="dialog" aria-modal="true" aria-label={t('call.incomingTitle')}>
          <h2>
            {group
              ? t(call.video ? 'call.incomingGroupVideo' : 'call.incomingGroupAudio', { name: nameOf(call.peer), group })
              : t(call.video ? 'call.incomingVideo' : 'call.incomingAudio', { name })}
          </h2>
          {group ? (
            <p className="muted">{t('call.inCall', { count: call.others.length, names: call.others.map(nameOf).join(', ') })}</p>
          ) : contact?.keyChanged ? (
            <p className="banner warn">{t('safety.changed', { name })}</p>
          ) : (
            <p className={`tag ${contact?.verified ? 'ok' : ''}`}>{contact?.verified ? t('call.verified') : t('call.notVerified')}</p>
          )}
          {full && (
            <p className="banner warn" role="alert">
              {t('call.full', { count: limit })}
            </p>
          )}
          <div className="row">
            <button type="button" className="danger" onClick={() => act(() => calls.decline())}>
              {t('call.decline')}
            </button>
            <button type="button" className="primary" autoFocus disabled={full} onClick={() => act(() => calls.accept())}>
              {group ? t('call.joinNow') : t('call.accept')}
            </button>
          </div>
        </div>
      </div>
    );
  }

  const status = group
    ? call.phase === 'ringing'
      ? t('call.ringingGroup', { group })
      : t('call.activeGroup', { group, count: call.others.length + 1 })
    : call.phase === 'ringing'
      ? t('call.ringing', { name })
      : call.phase === 'connecting'
        ? t('call.connecting', { name })
        : t('call.active', { name });
  // Each participant's camera and microphone are their first tracks; a further video track is a shared screen.
  const tiles = call.others.map((peer) => {
    const remote = client.links.remoteStream(peer);
    const videos = remote?.getVideoTracks().filter((v) => v.readyState === 'live') ?? [];
    return { peer, camera: [...(remote?.getAudioTracks() ?? []), ...videos.slice(0, 1)], screen: videos.slice(1, 2), connected: (remote?.getTracks().length ?? 0) > 0 };
  });
  const screens = tiles.filter((tile) => tile.screen.length > 0);
  return (
    <section className={`call-screen ${call.video ? 'video' : 'audio'} ${call.group ? 'group' : ''}`} aria-label={t('call.title', { name })}>
      <p className="call-status" role="status">
        {status}
      </p>
      {call.group && (
        <ul className="call-people" aria-label={t('call.people')}>
          {tiles.map((tile) => (
            <li key={tile.peer}>
              {nameOf(tile.peer)} <span className="muted small">{tile.connected ? t('call.peerConnected') : t('call.peerConnecting')}</span>
            </li>
          ))}
        </ul>
      )}
      <div className={`call-media ${tiles.length > 1 ? 'grid' : ''}`}>
        {tiles.map((tile) =>
          call.group && call.video ? (
            <figure key={tile.peer}>
              <Media kind="remote" tracks={tile.camera} muted={false} video label={t('call.remoteMedia', { name: nameOf(tile.peer) })} />
              <figcaption>{nameOf(tile.peer)}</figcaption>
            </figure>
          ) : (
            <Media key={tile.peer} kind="remote" tracks={tile.camera} muted={false} video={call.video} label={t('call.remoteMedia', { name: nameOf(tile.peer) })} />
          ),
        )}
        {call.video && <Media kind="self" tracks={call.local?.getVideoTracks() ?? []} muted video label={t('call.ownCamera')} />}
      </div>
      {screens.map((tile) => (
        <div className="call-media screen" key={tile.peer}>
          <Media kind="screen" tracks={tile.screen} muted video label={t('call.remoteScreen', { name: nameOf(tile.peer) })} />
        </div>
      ))}
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
          {call.group ? t('call.leave') : t('call.hangUp')}
        </button>
      </div>
      <DevicePicker client={client} video={call.video} />
    </section>
  );
}

/** Which microphone (and camera) the call uses, switchable during the call. */
function DevicePicker({ client, video }: { client: WorkerClient; video: boolean }) {
  const { t } = useTranslation();
  const [devices, setDevices] = useState<MediaDeviceInfo[]>([]);
  useEffect(() => {
    let live = true;
    const load = () => void client.calls.devices().then((d) => live && setDevices(d));
    load();
    navigator.mediaDevices?.addEventListener('devicechange', load);
    return () => {
      live = false;
      navigator.mediaDevices?.removeEventListener('devicechange', load);
    };
  }, [client]);
  const kinds: Array<['audio' | 'video', MediaDeviceKind]> = video ? [['audio', 'audioinput'], ['video', 'videoinput']] : [['audio', 'audioinput']];
  const pickers = kinds.map(([kind, deviceKind]) => ({ kind, list: devices.filter((d) => d.kind === deviceKind && d.deviceId) })).filter((p) => p.list.length > 1);
  if (pickers.length === 0) return null;
  return (
    <details className="call-devices">
      <summary>{t('call.devices')}</summary>
      {pickers.map(({ kind, list }) => (
        <label key={kind}>
          {kind === 'audio' ? t('call.microphone') : t('call.camera')}
          <select aria-label={kind === 'audio' ? t('call.microphone') : t('call.camera')} value={client.calls.deviceOf(kind) ?? ''} onChange={(e) => void client.calls.switchDevice(kind, e.target.value).catch(() => undefined)}>
            {list.map((d, i) => (
              <option key={d.deviceId} value={d.deviceId}>
                {d.label || `${kind === 'audio' ? t('call.microphone') : t('call.camera')} ${i + 1}`}
              </option>
            ))}
          </select>
        </label>
      ))}
    </details>
  );
}
