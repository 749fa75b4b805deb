import { type FormEvent, useEffect, useMemo, useRef, useState } from 'react';
import { useTranslation } from 'react-i18next';
import { GROUP_AUDIO_LIMIT, GROUP_VIDEO_LIMIT, groupLimit } from '../calls';
import type { LinkState } from '../rtc';
import type { WorkerClient } from '../client';
import { ConfirmDialog, LanguageSwitch, initials, useReveal } from '../components';
import { type ChatMessage, type Conversation, type DirectoryEntry, type FileItem, type View, parseGroupSend } from '../protocol';
import { CallScreen } from './CallScreen';
import { AttachButton, FileCard, bytes, useDropZone } from './Files';
import { SafetyNumber } from './SafetyNumber';
import { Security } from './Security';

/** Conversations this device shows unmasked (all are masked unless the member turned it off). */
const MASK_KEY = 'peerbubble.unmasked';

type Selection = { kind: 'contact'; member: string } | { kind: 'group'; conversation: string } | null;

function unmaskedConversations(): Set<string> {
  try {
    const saved: unknown = JSON.parse(localStorage.getItem(MASK_KEY) ?? '[]');
    return new Set(Array.isArray(saved) ? saved.filter((s): s is string => typeof s === 'string') : []);
  } catch {
    return new Set();
  }
}

export function Home({ client, view, notices }: { client: WorkerClient; view: View; notices: Array<{ type: string; [k: string]: unknown }> }) {
  const { t } = useTranslation();
  const [selection, setSelection] = useState<Selection>(null);
  const [creating, setCreating] = useState(false);
  const [removing, setRemoving] = useState<DirectoryEntry | null>(null);
  const [safety, setSafety] = useState<DirectoryEntry | null>(null);
  const [security, setSecurity] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [missedSeen, setMissedSeen] = useState(0);
  const names = useMemo(() => new Map(view.directory.map((e) => [e.member, e.displayName])), [view.directory]);
  const nameOf = (id: string) => (id === view.me.member ? t('you') : (names.get(id) ?? t('unknownMember')));

  const byCategory = useMemo(() => {
    const groups = new Map<string, DirectoryEntry[]>();
    for (const e of view.directory) {
      const category = e.categories[0] ?? '';
      groups.set(category, [...(groups.get(category) ?? []), e]);
    }
    return [...groups.entries()].sort(([a], [b]) => a.localeCompare(b));
  }, [view.directory]);
  const groups = view.conversations.filter((c) => c.kind === 'group');
  const direct = (member: string) => view.conversations.find((c) => c.kind === 'direct' && c.members.includes(member));
  const current: Conversation | undefined =
    selection?.kind === 'contact' ? direct(selection.member) : selection?.kind === 'group' ? view.conversations.find((c) => c.id === selection.conversation) : undefined;
  const contact = selection?.kind === 'contact' ? view.directory.find((e) => e.member === selection.member) : undefined;

  const run = async (f: () => Promise<unknown>) => {
    setError(null);
    try {
      await f();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };

  const openContact = (member: string) => {
    setSelection({ kind: 'contact', member });
    if (!direct(member)) {
      // This side, which opens the conversation, offers once it exists: the connection gathers meanwhile.
      const online = view.directory.find((e) => e.member === member)?.online ?? false;
      if (online) client.links.prepare(member);
      void run(() => client.send({ kind: 'startDirect', member }));
    }
  };

  const stopped = view.signaling.startsWith('stopped:') ? view.signaling.slice('stopped:'.length) : null;
  // A message the bubble could not keep for someone away is not silently lost: say so.
  const undeliverable = notices.filter((n) => n.type === 'undeliverable').at(-1);
  useEffect(() => {
    if (!undeliverable) return;
    const name = view.directory.find((e) => e.member === undeliverable.to)?.displayName ?? String(undeliverable.to);
    setError(t('chat.undeliverable', { name, reason: String(undeliverable.reason) }));
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [undeliverable?.receivedAt]);
  const unread = (c: Conversation | undefined) => (c ? c.history.filter((m) => m.from !== view.me.member && !m.receipts[view.me.member]).length : 0);

  return (
    <div className={`app ${selection ? 'has-selection' : ''}`}>
      <header className="topbar">
        <div className="who">
          <strong>{view.me.displayName}</strong>
          <span className="muted small">{t('home.bubble', { bubble: view.me.bubble })}</span>
        </div>
        <ConnectionBadge state={view.signaling} />
        <LanguageSwitch />
        <button type="button" onClick={() => setSecurity(true)}>
          {t('home.security')}
        </button>
        <button type="button" onClick={() => void client.send({ kind: 'lock' })}>
          {t('home.lock')}
        </button>
      </header>
      {stopped && (
        <div className="banner error" role="alert">
          {stopped === 'member_removed' || stopped === 'unknown_member' ? t('home.revoked') : t('home.stopped', { code: stopped })}
        </div>
      )}
      {error && (
        <div className="banner error" role="alert">
          {error} <button type="button" onClick={() => setError(null)}>{t('close')}</button>
        </div>
      )}
      {view.missedWhileAway > missedSeen && (
        <div className="banner warn" role="alert">
          {t('home.missedWhileAway', { count: view.missedWhileAway - missedSeen })}{' '}
          <button type="button" onClick={() => setMissedSeen(view.missedWhileAway)}>
            {t('close')}
          </button>
        </div>
      )}
      <nav className="sidebar" aria-label={t('home.contacts')}>
        <h2>{t('home.contacts')}</h2>
        {view.directory.length === 0 && (
          <p className="muted empty" role="status">
            {view.signaling === 'ready' ? t('home.noContacts') : t('home.loadingContacts')}
          </p>
        )}
        {byCategory.map(([category, entries]) => (
          <section key={category} aria-label={category}>
            <h3 className="category">{category.replace(/-/g, ' ')}</h3>
            <ul>
              {entries.map((e) => (
                <li key={e.member}>
                  <button
                    type="button"
                    className={`contact ${selection?.kind === 'contact' && selection.member === e.member ? 'selected' : ''}`}
                    onClick={() => openContact(e.member)}
                    aria-current={selection?.kind === 'contact' && selection.member === e.member}
                  >
                    <span className="avatar" aria-hidden="true">{initials(e.displayName)}</span>
                    <span className="name">{e.displayName}</span>
                    {e.keyChanged && <span className="tag warn">{t('safety.changedShort')}</span>}
                    {e.verified && <span className="tag ok">{t('safety.verifiedShort')}</span>}
                    {unread(direct(e.member)) > 0 && <span className="count">{unread(direct(e.member))}</span>}
                    <span className={`presence ${e.online ? 'on' : ''}`} title={e.online ? t('online') : t('offline')}>
                      <span className="sr-only">{e.online ? t('online') : t('offline')}</span>
                    </span>
                  </button>
                </li>
              ))}
            </ul>
          </section>
        ))}
        <h2>{t('home.groups')}</h2>
        {groups.length === 0 && <p className="muted empty">{t('home.noGroups')}</p>}
        <ul>
          {groups.map((g) => (
            <li key={g.id}>
              <button type="button" className={`contact ${current?.id === g.id ? 'selected' : ''}`} onClick={() => setSelection({ kind: 'group', conversation: g.id })}>
                <span className="avatar group" aria-hidden="true">#</span>
                <span className="name">{g.name}</span>
                {unread(g) > 0 && <span className="count">{unread(g)}</span>}
              </button>
            </li>
          ))}
        </ul>
        <button type="button" onClick={() => setCreating(true)} disabled={view.directory.length === 0}>
          {t('home.newGroup')}
        </button>
        <div className="setting">
          <label className="check">
            <input
              type="checkbox"
              checked={client.links.relayOnly}
              disabled={client.links.relayRequired}
              onChange={(e) => client.links.setRelayOnly(e.target.checked)}
            />
            {t('link.relayOnly')}
          </label>
          <p className="muted small">{client.links.relayRequired ? t('policy.relayRequired') : t('link.relayOnlyHint')}</p>
        </div>
        <BubbleRules view={view} />
      </nav>
      <main className="conversation">
        {!selection && (
          <div className="placeholder">
            <p>{view.directory.length > 0 ? t('home.pick') : view.signaling === 'ready' ? t('home.alone') : t('home.loadingContacts')}</p>
          </div>
        )}
        {selection && (
          <ConversationPane
            key={current?.id ?? (selection.kind === 'contact' ? selection.member : selection.conversation)}
            client={client}
            view={view}
            conversation={current}
            title={contact ? contact.displayName : (current?.name ?? '')}
            contact={contact}
            nameOf={nameOf}
            onBack={() => setSelection(null)}
            onSafety={() => contact && setSafety(contact)}
            onRemoveContact={() => contact && setRemoving(contact)}
            onError={setError}
            notices={notices}
          />
        )}
      </main>
      {creating && (
        <NewGroup
          view={view}
          onCancel={() => setCreating(false)}
          onCreate={(name, members) => {
            setCreating(false);
            void run(async () => {
              const id = await client.send({ kind: 'createGroup', name, members });
              if (typeof id === 'string') setSelection({ kind: 'group', conversation: id });
            });
          }}
        />
      )}
      {removing && (
        <ConfirmDialog
          title={t('home.removeTitle', { name: removing.displayName })}
          body={t('home.removeBody', { name: removing.displayName })}
          confirm={t('home.removeContact')}
          onCancel={() => setRemoving(null)}
          onConfirm={() => {
            const member = removing.member;
            setRemoving(null);
            void run(() => client.send({ kind: 'removeContact', member }));
            setSelection(null);
          }}
        />
      )}
      <CallScreen client={client} view={view} />
      {safety && <SafetyNumber client={client} entry={safety} me={view.me.displayName} onClose={() => setSafety(null)} />}
      {security && <Security client={client} label={`${view.me.bubble} ${view.me.displayName}`} onClose={() => setSecurity(false)} />}
    </div>
  );
}

function ConnectionBadge({ state }: { state: string }) {
  const { t } = useTranslation();
  const label = state === 'ready' ? t('status.ready') : state.startsWith('stopped') ? t('status.stopped') : t('status.connecting');
  return (
    <span className={`badge ${state === 'ready' ? 'ok' : state.startsWith('stopped') ? 'bad' : 'wait'}`} role="status">
      {label}
    </span>
  );
}

function ConversationPane(props: {
  client: WorkerClient;
  view: View;
  conversation: Conversation | undefined;
  title: string;
  contact: DirectoryEntry | undefined;
  nameOf: (id: string) => string;
  onBack: () => void;
  onSafety: () => void;
  onRemoveContact: () => void;
  onError: (e: string) => void;
  notices: Array<{ type: string; [k: string]: unknown }>;
}) {
  const { t } = useTranslation();
  const { client, conversation: c, view } = props;
  const [text, setText] = useState('');
  const [maskedChoice, setMasked] = useState(() => !(c && unmaskedConversations().has(c.id)));
  // The bubble's rule wins over this device's choice: masked, and the switch cannot turn it off.
  const maskRequired = view.policy.masked_by_default;
  const masked = maskRequired || maskedChoice;
  const [members, setMembers] = useState(false);
  const list = useRef<HTMLOListElement>(null);
  // Refused for good (revoked): nothing can be sent any more; the banner says why.
  const stopped = view.signaling.startsWith('stopped:');
  const ready = c !== undefined && c.kind !== 'pending' && !stopped;
  const history = c?.history ?? [];

  // A file sent to a group shows in the group (each member's copy is its own transfer over the pair's
  // connection); a 1:1 conversation shows the rest of the pair's files.
  const shownHere = (f: FileItem) => c !== undefined && (c.kind === 'group' ? f.group === c.id : f.conversation === c.id && f.group === null);
  const items = history.length + view.files.filter(shownHere).length;
  useEffect(() => {
    list.current?.lastElementChild?.scrollIntoView({ block: 'end' });
  }, [items]);

  // Read receipts for what is on screen, once per message (client-core records ours in the history).
  const unreadIds = c && ready ? c.history.filter((m) => m.from !== view.me.member && !m.deleted && !m.receipts[view.me.member]).map((m) => m.id) : [];
  const unreadKey = unreadIds.join(',');
  useEffect(() => {
    if (!c || unreadKey === '') return;
    void client.send({ kind: 'markRead', conversation: c.id, messages: unreadKey.split(',') }).catch(() => undefined);
    // eslint-disable-next-line react-hooks/exhaustive-deps -- keyed on the ids, not on each new view object
  }, [unreadKey, client]);

  // Typing indicator: sent when the member starts writing, stopped after 3 s without a key or on send.
  const typingSince = useRef(0);
  const stopTyping = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const setTyping = (typing: boolean) => {
    if (!c || !ready) return;
    clearTimeout(stopTyping.current);
    if (typing) {
      stopTyping.current = setTimeout(() => setTyping(false), 3_000);
      if (Date.now() - typingSince.current < 2_500) return;
      typingSince.current = Date.now();
    } else {
      if (typingSince.current === 0) return;
      typingSince.current = 0;
    }
    void client.send({ kind: 'typing', conversation: c.id, typing }).catch(() => undefined);
  };
  useEffect(() => () => clearTimeout(stopTyping.current), []);

  const send = async (e: FormEvent) => {
    e.preventDefault();
    if (!c || !text.trim()) return;
    setTyping(false);
    try {
      await client.send({ kind: 'sendText', conversation: c.id, text });
      setText('');
    } catch (err) {
      props.onError(err instanceof Error ? err.message : String(err));
    }
  };

  // Files: to a contact, or to every other member of a group, when the bubble allows them and the conversation
  // is ready.
  const filesAllowed = view.policy.files_allowed;
  const isGroup = c?.kind === 'group';
  const canSendFiles = ready && (props.contact !== undefined || (isGroup && c.members.length > 1)) && filesAllowed;
  const [preparing, setPreparing] = useState<string | null>(null);
  const sendFile = (file: File) => {
    const contact = props.contact;
    if (!canSendFiles || !c) return;
    if (file.size > view.policy.max_file_bytes) {
      props.onError(t('file.tooLarge', { name: file.name, size: bytes(view.policy.max_file_bytes) }));
      return;
    }
    setPreparing(file.name);
    const sent = contact
      ? client.send({ kind: 'sendFile', member: contact.member, file })
      : client.send({ kind: 'sendGroupFile', group: c.id, file }).then((value) => {
          const failed = parseGroupSend(value);
          if (failed === null) throw new Error('unexpected answer from the worker');
          if (failed.length > 0) props.onError(t('file.groupPartial', { name: file.name, members: failed.map(props.nameOf).join(', ') }));
        });
    sent.catch((err: Error) => props.onError(err.message)).finally(() => setPreparing(null));
  };
  const drop = useDropZone(canSendFiles, sendFile);
  const hashing = props.notices.filter((n) => n.type === 'filePreparing' && n.name === preparing).at(-1);
  const files = view.files.filter(shownHere);
  const timeline: Array<{ at: number; message?: ChatMessage; file?: FileItem }> = [
    ...history.map((m) => ({ at: m.sent_at_ms, message: m })),
    ...files.map((f) => ({ at: f.at, file: f })),
  ].sort((a, b) => a.at - b.at);

  const toggleMask = () => {
    if (!c || maskRequired) return;
    const set = unmaskedConversations();
    if (masked) set.add(c.id);
    else set.delete(c.id);
    localStorage.setItem(MASK_KEY, JSON.stringify([...set]));
    setMasked(!maskedChoice);
  };

  // A direct connection whose certificate was not the one the contact announced (within the last ten minutes).
  const linkRefused = props.notices.some(
    (n) => n.type === 'linkRefused' && n.peer === props.contact?.member && typeof n.receivedAt === 'number' && Date.now() - n.receivedAt < 600_000,
  );
  const lastTyping = props.notices.filter((n) => n.type === 'typing' && n.conversation === c?.id).at(-1);
  // A stop that never came (the other tab closed) must not leave "is typing" on screen.
  const fresh = typeof lastTyping?.receivedAt === 'number' && Date.now() - lastTyping.receivedAt < 8_000;
  const typing = fresh && lastTyping?.typing === true && lastTyping.from !== view.me.member ? lastTyping : undefined;

  return (
    <section className={`pane ${drop.over ? 'drop' : ''}`} aria-label={props.title} {...drop.handlers}>
      {drop.over && (
        <div className="drop-hint" aria-hidden="true">
          {t('file.drop', { name: props.title })}
        </div>
      )}
      <div className="pane-head">
        <button type="button" className="back" onClick={props.onBack} aria-label={t('back')}>
          ←
        </button>
        <h2>{props.title}</h2>
        {props.contact?.keyChanged && <span className="tag warn">{t('safety.changedShort')}</span>}
        {/* Away, messages take the bubble's server (and wait there), whatever a dead connection still looks like. */}
        {props.contact && <LinkBadge state={props.contact.online ? client.links.state(props.contact.member) : null} />}
        <div className="actions">
          <label className="check" title={maskRequired ? t('policy.maskRequired') : undefined}>
            <input type="checkbox" checked={masked} onChange={toggleMask} disabled={maskRequired} />
            {t('chat.mask')}
          </label>
          {c && c.kind !== 'pending' && <TimerPicker client={client} view={view} conversation={c} disabled={!ready} onError={props.onError} />}
          {props.contact && view.policy.calls_allowed && (
            <>
              <button
                type="button"
                disabled={!ready || client.calls.call !== null || !client.links.isOpen(props.contact.member)}
                onClick={() => props.contact && void client.calls.start(props.contact.member, false).catch((e: Error) => props.onError(e.message))}
              >
                {t('call.audio')}
              </button>
              <button
                type="button"
                disabled={!ready || client.calls.call !== null || !client.links.isOpen(props.contact.member)}
                onClick={() => props.contact && void client.calls.start(props.contact.member, true).catch((e: Error) => props.onError(e.message))}
              >
                {t('call.video')}
              </button>
            </>
          )}
          {props.contact && (
            <>
              <button type="button" onClick={props.onSafety}>
                {t('safety.open')}
              </button>
              <button type="button" className="danger" onClick={props.onRemoveContact}>
                {t('home.removeContact')}
              </button>
            </>
          )}
          {c?.kind === 'group' && view.policy.calls_allowed && <GroupCallButtons client={client} view={view} group={c} onError={props.onError} ready={ready} />}
          {c?.kind === 'group' && (
            <>
              <button type="button" onClick={() => setMembers(true)}>
                {t('group.members')}
              </button>
              <button type="button" className="danger" onClick={() => void client.send({ kind: 'leave', conversation: c.id }).catch((e: Error) => props.onError(e.message))}>
                {t('group.leave')}
              </button>
            </>
          )}
        </div>
      </div>
      {props.contact?.keyChanged && (
        <p className="banner warn" role="alert">
          {t('safety.changed', { name: props.contact.displayName })}
        </p>
      )}
      {linkRefused && (
        <p className="banner warn" role="alert">
          {t('link.refused', { name: props.title })}
        </p>
      )}
      {!ready && (
        <p className="muted setup" role="status">
          {props.contact && !props.contact.online ? t('chat.waitingOffline', { name: props.title }) : t('chat.settingUp')}
        </p>
      )}
      {ready && props.contact && !props.contact.online && (
        <p className={`away ${props.contact.waiting ? 'waiting' : ''}`} role="status">
          {view.mailboxTtlMs
            ? t(props.contact.waiting ? 'chat.awayWaiting' : 'chat.awayKept', {
                name: props.title,
                duration: duration(Math.round(view.mailboxTtlMs / 1000), t),
              })
            : t('chat.awayNotKept', { name: props.title })}
        </p>
      )}
      {ready && isGroup && c && <GroupAway view={view} members={c.members} nameOf={props.nameOf} />}
      <ol className="messages" ref={list} aria-live="polite">
        {ready && timeline.length === 0 && <li className="muted empty">{t('chat.empty')}</li>}
        {timeline.map(({ message: m, file: f }) =>
          m ? (
            <Message
              key={m.id}
              m={m}
              mine={m.from === view.me.member}
              author={props.nameOf(m.from)}
              masked={masked}
              conversation={c?.id ?? ''}
              client={client}
              onError={props.onError}
              waiting={props.contact?.waiting === true}
            />
          ) : f ? (
            <FileCard
              key={f.transfer}
              f={f}
              masked={masked}
              peerName={props.nameOf(f.peer)}
              client={client}
              onError={props.onError}
              time={new Date(f.at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}
            />
          ) : null,
        )}
      </ol>
      {preparing && (
        <p className="muted small preparing" role="status">
          {t('file.preparing', {
            name: preparing,
            percent: hashing && typeof hashing.done === 'number' && typeof hashing.total === 'number' && hashing.total > 0 ? Math.floor((hashing.done / hashing.total) * 100) : 0,
          })}
        </p>
      )}
      {typing && <p className="muted small typing">{t('chat.typing', { name: props.nameOf(String(typing.from)) })}</p>}
      <form className="composer" onSubmit={(e) => void send(e)}>
        <label className="sr-only" htmlFor="composer">
          {t('chat.placeholder')}
        </label>
        <input
          id="composer"
          value={text}
          onChange={(e) => {
            setText(e.target.value);
            setTyping(e.target.value !== '');
          }}
          placeholder={ready ? t('chat.placeholder') : t('chat.notReady')}
          disabled={!ready}
          autoComplete="off"
        />
        {(props.contact || isGroup) && (
          <AttachButton
            disabled={!canSendFiles || preparing !== null}
            onFile={sendFile}
            title={filesAllowed ? t('file.sendHint', { name: props.title }) : t('policy.noFiles')}
          />
        )}
        <button type="submit" className="primary" disabled={!ready || !text.trim()}>
          {t('chat.send')}
        </button>
      </form>
      {members && c && <GroupMembers client={client} view={view} conversation={c} nameOf={props.nameOf} onClose={() => setMembers(false)} onError={props.onError} />}
    </section>
  );
}

function Message(props: {
  m: ChatMessage;
  mine: boolean;
  author: string;
  masked: boolean;
  conversation: string;
  client: WorkerClient;
  onError: (e: string) => void;
  /** The contact is away and the bubble keeps what we send: an unreceipted message waits there. */
  waiting: boolean;
}) {
  const { t } = useTranslation();
  const { m } = props;
  const [revealed, reveal] = useReveal();
  const [editing, setEditing] = useState<string | null>(null);
  const hidden = props.masked && !revealed && !m.deleted;
  const time = new Date(m.sent_at_ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const read = Object.values(m.receipts).includes('read');
  return (
    <li className={`message ${props.mine ? 'mine' : ''}`}>
      <div className="meta">
        <span className="author">{props.author}</span> <time>{time}</time>
        {m.edited && <span className="muted"> · {t('chat.edited')}</span>}
        {props.mine && (
          <span className="muted">
            {' · '}
            {read ? t('chat.read') : Object.keys(m.receipts).length > 0 ? t('chat.delivered') : props.waiting ? t('chat.kept') : t('chat.sent')}
          </span>
        )}
      </div>
      {editing !== null ? (
        <form
          className="edit"
          onSubmit={(e) => {
            e.preventDefault();
            const text = editing.trim();
            setEditing(null);
            if (text && text !== m.text) void props.client.send({ kind: 'edit', conversation: props.conversation, message: m.id, text }).catch((err: Error) => props.onError(err.message));
          }}
          onKeyDown={(e) => {
            if (e.key === 'Escape') setEditing(null);
          }}
        >
          <input aria-label={t('chat.editPrompt')} value={editing} autoFocus onChange={(e) => setEditing(e.target.value)} />
          <button type="submit" className="primary" disabled={!editing.trim()}>
            {t('chat.save')}
          </button>
          <button type="button" onClick={() => setEditing(null)}>
            {t('cancel')}
          </button>
        </form>
      ) : m.deleted ? (
        <p className="muted text">{t('chat.deleted')}</p>
      ) : hidden ? (
        <button type="button" className="masked" onClick={reveal}>
          {t('chat.reveal')}
        </button>
      ) : (
        <p className="text">{m.text}</p>
      )}
      {props.mine && !m.deleted && editing === null && (
        <div className="message-actions">
          <button
            type="button"
            className="link"
            onClick={() => setEditing(hidden ? '' : m.text)}
          >
            {t('chat.edit')}
          </button>
          <button type="button" className="link" onClick={() => void props.client.send({ kind: 'delete', conversation: props.conversation, message: m.id }).catch((e: Error) => props.onError(e.message))}>
            {t('chat.delete')}
          </button>
        </div>
      )}
    </li>
  );
}

/** Calls in a group: ring everyone (audio or video), or join the call under way (or say it is full). */
function GroupCallButtons({ client, view, group, ready, onError }: { client: WorkerClient; view: View; group: Conversation; ready: boolean; onError: (e: string) => void }) {
  const { t } = useTranslation();
  const busy = client.calls.call !== null;
  const call = group.call;
  if (call) {
    const limit = groupLimit(call.video);
    const inIt = call.participants.includes(view.me.member);
    if (inIt) return null;
    const full = call.participants.length >= limit;
    return (
      <button
        type="button"
        className="primary"
        disabled={!ready || busy || full}
        title={full ? t('call.full', { count: limit }) : undefined}
        onClick={() => void client.calls.joinGroup(group.id).catch((e: Error) => onError(e.message))}
      >
        {full ? t('call.fullShort') : t('call.join', { count: call.participants.length })}
      </button>
    );
  }
  const start = (video: boolean) => void client.calls.startGroup(group.id, video).catch((e: Error) => onError(e.message));
  const size = group.members.length;
  return (
    <>
      <button type="button" disabled={!ready || busy || size < 2} onClick={() => start(false)} title={size > GROUP_AUDIO_LIMIT ? t('call.limits') : undefined}>
        {t('call.audio')}
      </button>
      <button type="button" disabled={!ready || busy || size < 2} onClick={() => start(true)} title={size > GROUP_VIDEO_LIMIT ? t('call.limits') : undefined}>
        {t('call.video')}
      </button>
    </>
  );
}

function NewGroup({ view, onCancel, onCreate }: { view: View; onCancel: () => void; onCreate: (name: string, members: string[]) => void }) {
  const { t } = useTranslation();
  const [name, setName] = useState('');
  const [chosen, setChosen] = useState<Set<string>>(new Set());
  return (
    <div className="dialog-backdrop">
      <form
        className="dialog"
        role="dialog"
        aria-modal="true"
        aria-label={t('group.new')}
        onSubmit={(e) => {
          e.preventDefault();
          if (name.trim() && chosen.size > 0) onCreate(name.trim(), [...chosen]);
        }}
      >
        <h2>{t('group.new')}</h2>
        <label>
          {t('group.name')}
          <input value={name} onChange={(e) => setName(e.target.value)} maxLength={100} required autoFocus />
        </label>
        <fieldset>
          <legend>{t('group.choose')}</legend>
          {view.directory.map((e) => (
            <label key={e.member} className="check">
              <input
                type="checkbox"
                checked={chosen.has(e.member)}
                onChange={() => {
                  const next = new Set(chosen);
                  if (next.has(e.member)) next.delete(e.member);
                  else next.add(e.member);
                  setChosen(next);
                }}
              />
              {e.displayName}
            </label>
          ))}
        </fieldset>
        <div className="row">
          <button type="button" onClick={onCancel}>
            {t('cancel')}
          </button>
          <button type="submit" className="primary" disabled={!name.trim() || chosen.size === 0}>
            {t('group.create')}
          </button>
        </div>
      </form>
    </div>
  );
}

/** Which members of a group are away, and whether what is sent waits for them in the bubble. */
function GroupAway({ view, members, nameOf }: { view: View; members: string[]; nameOf: (id: string) => string }) {
  const { t } = useTranslation();
  const away = members.filter((m) => !(view.directory.find((e) => e.member === m)?.online ?? false));
  if (away.length === 0) return null;
  const names = away.map(nameOf).join(', ');
  return (
    <p className="away" role="status">
      {view.mailboxTtlMs
        ? t('chat.groupAway', { count: away.length, names, duration: duration(Math.round(view.mailboxTtlMs / 1000), t) })
        : t('chat.groupAwayNotKept', { count: away.length, names })}
    </p>
  );
}

function GroupMembers(props: { client: WorkerClient; view: View; conversation: Conversation; nameOf: (id: string) => string; onClose: () => void; onError: (e: string) => void }) {
  const { t } = useTranslation();
  const { client, conversation: c } = props;
  const others = props.view.directory.filter((e) => !c.members.includes(e.member));
  const act = (command: Parameters<WorkerClient['send']>[0]) => void client.send(command).catch((e: Error) => props.onError(e.message));
  return (
    <div className="dialog-backdrop">
      <div className="dialog" role="dialog" aria-modal="true" aria-label={t('group.members')}>
        <h2>{t('group.members')}</h2>
        <ul className="plain">
          {c.members.map((m) => (
            <li key={m} className="row">
              <span>{props.nameOf(m)}</span>
              <button type="button" className="danger" onClick={() => act({ kind: 'removeMember', conversation: c.id, member: m })}>
                {t('group.remove')}
              </button>
            </li>
          ))}
        </ul>
        {others.length > 0 && <h3>{t('group.add')}</h3>}
        <ul className="plain">
          {others.map((e) => (
            <li key={e.member} className="row">
              <span>{e.displayName}</span>
              <button type="button" onClick={() => act({ kind: 'addMember', conversation: c.id, member: e.member })}>
                {t('group.addButton')}
              </button>
            </li>
          ))}
        </ul>
        <div className="row">
          <button type="button" className="primary" onClick={props.onClose}>
            {t('close')}
          </button>
        </div>
      </div>
    </div>
  );
}

/** How the messages with a contact travel: always end-to-end encrypted; directly, through the bubble's relay,
 * or through the bubble's server while no direct connection is open. */
function LinkBadge({ state }: { state: LinkState | null }) {
  const { t } = useTranslation();
  return (
    <span className={`tag link ${state ?? 'server'}`} title={t('link.hint')}>
      {t(`link.${state ?? 'server'}`)}
    </span>
  );
}

/** What the bubble's administrators require, in words, and this device's key fingerprint (the console shows the
 * same digits beside the member's name). */
function BubbleRules({ view }: { view: View }) {
  const { t } = useTranslation();
  const p = view.policy;
  const rules: string[] = [];
  if (p.masked_by_default) rules.push(t('policy.masked'));
  if (p.disappear_within_secs > 0) rules.push(t('policy.disappear', { duration: duration(p.disappear_within_secs, t) }));
  if (!p.files_allowed) rules.push(t('policy.noFiles'));
  else if (p.max_file_bytes < 4 * 1024 ** 3) rules.push(t('policy.fileLimit', { size: size(p.max_file_bytes) }));
  if (!p.calls_allowed) rules.push(t('policy.noCalls'));
  if (p.relay_only) rules.push(t('policy.relayOnly'));
  return (
    <details className="setting rules">
      <summary>{rules.length ? t('policy.title', { count: rules.length }) : t('policy.none')}</summary>
      {rules.length > 0 && (
        <ul data-testid="bubble-rules">
          {rules.map((r) => (
            <li key={r}>{r}</li>
          ))}
        </ul>
      )}
      <p className="muted small">{t('policy.fingerprint')}</p>
      <p className="fingerprint" data-testid="own-fingerprint">
        {view.fingerprint.replace(/(\d{5})(?=\d)/g, '$1 ')}
      </p>
    </details>
  );
}

/** The durations offered for disappearing messages (the bubble's rule may cap them). */
const TIMERS = [300, 3600, 86_400, 604_800];

/** Disappearing messages for the conversation: off, or a duration; any member may change it, everyone sees it. */
function TimerPicker(props: { client: WorkerClient; view: View; conversation: Conversation; disabled: boolean; onError: (e: string) => void }) {
  const { t } = useTranslation();
  const limit = props.view.policy.disappear_within_secs;
  const current = props.conversation.timer ?? 0;
  const choices = [...new Set([0, ...TIMERS, ...(current ? [current] : [])])].sort((a, b) => a - b);
  return (
    <label className={`timer ${current ? 'on' : ''}`} title={limit > 0 ? t('policy.disappear', { duration: duration(limit, t) }) : undefined}>
      <span className="sr-only">{t('timer.label')}</span>
      <select
        aria-label={t('timer.label')}
        value={current}
        disabled={props.disabled}
        onChange={(e) =>
          void props.client.send({ kind: 'setTimer', conversation: props.conversation.id, seconds: Number(e.target.value) }).catch((err: Error) => props.onError(err.message))
        }
      >
        {choices.map((secs) => (
          <option key={secs} value={secs} disabled={limit > 0 && (secs === 0 || secs > limit)}>
            {secs === 0 ? t('timer.off') : t('timer.after', { duration: duration(secs, t) })}
          </option>
        ))}
      </select>
    </label>
  );
}

function duration(secs: number, t: (key: string, options?: Record<string, unknown>) => string): string {
  if (secs % 86_400 === 0) return t('policy.days', { count: secs / 86_400 });
  if (secs % 3600 === 0) return t('policy.hours', { count: secs / 3600 });
  if (secs % 60 === 0) return t('policy.minutes', { count: secs / 60 });
  return t('policy.seconds', { count: secs });
}

function size(bytes: number): string {
  if (bytes >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(bytes % 1024 ** 3 ? 1 : 0)} GiB`;
  if (bytes >= 1024 ** 2) return `${(bytes / 1024 ** 2).toFixed(bytes % 1024 ** 2 ? 1 : 0)} MiB`;
  if (bytes >= 1024) return `${Math.round(bytes / 1024)} KiB`;
  return `${bytes} B`;
}
