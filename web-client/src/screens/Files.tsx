// Files in a conversation: one card per transfer in the timeline (offer, progress with speed and time left,
// pause, resume, cancel; a received file kept encrypted on this device, opened or saved decrypted on demand),
// the button that sends a file and the drop zone around the conversation.
import { type DragEvent, type ReactNode, type RefObject, useRef, useState } from 'react';
import { useTranslation } from 'react-i18next';
import type { WorkerClient } from '../client';
import { Icon, useReveal } from '../components';
import type { FileItem } from '../protocol';

/** Bytes for people: 12.4 MB, 860 KB. */
export function bytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(n >= 1e10 ? 0 : 1)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(n >= 1e8 ? 0 : 1)} MB`;
  if (n >= 1e3) return `${Math.round(n / 1e3)} kB`;
  return `${n} B`;
}

function seconds(s: number, t: (k: string, o?: Record<string, unknown>) => string): string {
  if (s >= 3600) return t('file.hours', { count: Math.round(s / 3600) });
  if (s >= 60) return t('file.minutes', { count: Math.round(s / 60) });
  return t('file.seconds', { count: Math.max(1, Math.round(s)) });
}

/** Speed over the last few seconds, from the progress the views brought. */
function useRate(done: number): number | null {
  const samples = useRef<Array<[number, number]>>([]);
  const now = Date.now();
  const list = samples.current;
  if (list.length === 0 || list[list.length - 1]?.[1] !== done) list.push([now, done]);
  while (list.length > 2 && now - (list[0]?.[0] ?? now) > 5_000) list.shift();
  const [first, last] = [list[0], list[list.length - 1]];
  if (!first || !last || last[0] - first[0] < 500 || last[1] <= first[1]) return null;
  return ((last[1] - first[1]) * 1000) / (last[0] - first[0]);
}

/** Saves (or opens) a decrypted copy the worker made. */
async function decrypted(client: WorkerClient, f: FileItem, open: boolean): Promise<void> {
  const file = await client.send({ kind: 'openFile', transfer: f.transfer, name: f.name });
  if (!(file instanceof File)) throw new Error('the worker gave no file');
  const url = URL.createObjectURL(file);
  const a = document.createElement('a');
  a.href = url;
  if (open) {
    a.target = '_blank';
    a.rel = 'noopener';
  } else {
    a.download = f.name;
  }
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export function FileCard(props: { f: FileItem; masked: boolean; peerName: string; client: WorkerClient; onError: (e: string) => void; time: string }) {
  const { t } = useTranslation();
  const { f, client } = props;
  // A masked conversation hides file names too (they can say as much as a message), until shown.
  const [revealed, reveal] = useReveal();
  const hidden = props.masked && !revealed;
  const name = hidden ? t('file.hiddenName') : f.name;
  const [busy, setBusy] = useState<string | null>(null);
  const rate = useRate(f.bytes);
  const act = (label: string, run: () => Promise<unknown>) => {
    setBusy(label);
    run()
      .catch((e: Error) => props.onError(e.message.startsWith('file_mismatch') ? t('file.mismatch', { name }) : e.message))
      .finally(() => setBusy(null));
  };
  const pick = useRef<HTMLInputElement>(null);
  const percent = f.size === 0 ? 100 : Math.floor((f.bytes / f.size) * 100);
  const held = f.heldByUs || f.heldByThem;
  let status: ReactNode;
  const buttons: ReactNode[] = [];
  const button = (key: string, label: string, run: () => Promise<unknown>, className = '') =>
    buttons.push(
      <button key={key} type="button" className={className} disabled={busy !== null} onClick={() => act(key, run)}>
        {busy === key ? t('file.working') : label}
      </button>,
    );
  const cancel = () => button('cancel', t('file.cancel'), () => client.send({ kind: 'cancelFile', transfer: f.transfer }), 'danger');
  switch (f.state) {
    case 'asked':
      status = t('file.asked', { name: props.peerName });
      button('accept', t('file.accept'), () => client.send({ kind: 'acceptFile', transfer: f.transfer }), 'primary');
      button('decline', t('file.decline'), () => client.send({ kind: 'cancelFile', transfer: f.transfer }));
      break;
    case 'offered':
      status = f.needsFile ? t('file.pickAgain') : t('file.waiting', { name: props.peerName });
      cancel();
      break;
    case 'moving':
      if (f.needsFile) {
        status = t('file.pickAgain');
        buttons.push(
          <button key="pick" type="button" className="primary" onClick={() => pick.current?.click()}>
            {t('file.choose')}
          </button>,
        );
      } else if (f.heldByUs) status = t('file.pausedByYou');
      else if (f.heldByThem) status = t('file.pausedBy', { name: props.peerName });
      else if (rate) status = t('file.rate', { done: bytes(f.bytes), size: bytes(f.size), rate: bytes(rate), left: seconds((f.size - f.bytes) / rate, t) });
      else status = f.bytes > 0 ? t('file.progress', { done: bytes(f.bytes), size: bytes(f.size) }) : t('file.starting');
      if (f.heldByUs) button('resume', t('file.resume'), () => client.send({ kind: 'holdFile', transfer: f.transfer, held: false }), 'primary');
      else button('pause', t('file.pause'), () => client.send({ kind: 'holdFile', transfer: f.transfer, held: true }));
      cancel();
      break;
    case 'done':
      if (f.outgoing) status = t('file.sent', { name: props.peerName });
      else {
        status = t('file.kept');
        button('open', t('file.open'), () => decrypted(client, f, true), 'primary');
        button('save', t('file.save'), () => decrypted(client, f, false));
        button('forget', t('file.forget'), () => client.send({ kind: 'forgetFile', transfer: f.transfer }), 'danger');
      }
      break;
  }
  return (
    <li className={`message file ${f.outgoing ? 'mine' : ''}`} data-transfer={f.transfer} data-state={f.state}>
      <div className="meta">
        <span className="author">{f.outgoing ? t('you') : props.peerName}</span> <time>{props.time}</time>
      </div>
      <p className="file-name">
        <Icon name="file" />
        {hidden ? (
          <button type="button" className="masked" onClick={reveal}>
            {t('file.reveal')}
          </button>
        ) : (
          <strong>{f.name}</strong>
        )}{' '}
        <span className="muted">· {bytes(f.size)}</span>
      </p>
      {f.state === 'moving' && (
        <progress className={`progress ${held ? 'held' : ''}`} aria-label={t('file.progressLabel', { name })} max={100} value={percent} />
      )}
      <p className="muted small file-status" role="status">
        {f.state === 'moving' && !f.needsFile && <span className="percent">{percent} % · </span>}
        {status}
      </p>
      {buttons.length > 0 && <div className="file-actions">{buttons}</div>}
      <FileInput inputRef={pick} label={t('file.choose')} onFile={(file) => act('pick', () => client.send({ kind: 'resumeFile', transfer: f.transfer, file }))} />
    </li>
  );
}

/** A hidden file input opened by a button; the same file may be picked again. */
function FileInput(props: { inputRef: RefObject<HTMLInputElement | null>; label: string; onFile: (file: File) => void }) {
  return (
    <input
      ref={props.inputRef}
      type="file"
      hidden
      aria-label={props.label}
      onChange={(e) => {
        const file = e.target.files?.[0];
        e.target.value = '';
        if (file) props.onFile(file);
      }}
    />
  );
}

/** The "send a file" button of the composer. */
export function AttachButton(props: { disabled: boolean; onFile: (file: File) => void; title: string }) {
  const { t } = useTranslation();
  const input = useRef<HTMLInputElement>(null);
  return (
    <>
      <button type="button" className="attach" disabled={props.disabled} title={props.title} onClick={() => input.current?.click()}>
        <Icon name="attach" />
        <span className="attach-label">{t('file.send')}</span>
      </button>
      <FileInput inputRef={input} label={t('file.send')} onFile={props.onFile} />
    </>
  );
}

/** Drag-and-drop onto the conversation: highlights while a file hovers it, sends what is dropped. */
export function useDropZone(enabled: boolean, onFile: (file: File) => void) {
  const [over, setOver] = useState(false);
  const depth = useRef(0);
  const hasFile = (e: DragEvent) => enabled && [...e.dataTransfer.types].includes('Files');
  return {
    over,
    handlers: {
      onDragEnter: (e: DragEvent) => {
        if (!hasFile(e)) return;
        e.preventDefault();
        depth.current += 1;
        setOver(true);
      },
      onDragOver: (e: DragEvent) => {
        if (!hasFile(e)) return;
        e.preventDefault();
        e.dataTransfer.dropEffect = 'copy';
      },
      onDragLeave: () => {
        depth.current = Math.max(0, depth.current - 1);
        if (depth.current === 0) setOver(false);
      },
      onDrop: (e: DragEvent) => {
        depth.current = 0;
        setOver(false);
        if (!hasFile(e)) return;
        e.preventDefault();
        for (const file of e.dataTransfer.files) onFile(file);
      },
    },
  };
}
