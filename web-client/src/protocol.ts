// The messages between the page (UI) and the worker (client-core in WebAssembly, the key store, the signaling
// WebSocket). This boundary separates UI code from key material, so both sides check what they receive at run
// time instead of trusting the types: a malformed message is refused, never half-used.

export type MemberId = string;
export type ConversationId = string;

export type Command =
  | { kind: 'hello' }
  | { kind: 'enroll'; link: string; passphrase: string; securityKey?: NewSecurityKey }
  /** `securitySecret`: the security key's PRF output, for a key store made with one (handed over, not copied). */
  | { kind: 'unlock'; passphrase: string; securitySecret?: Uint8Array }
  | { kind: 'lock' }
  /** Whether this device's key store needs a security key, and which (to ask it before a change). */
  | { kind: 'protection' }
  /**
   * Changes the passphrase and/or the security key. The current passphrase (and the current key's PRF output,
   * when the store has a key) is checked first. `newPassphrase` empty keeps the passphrase.
   */
  | {
      kind: 'changeProtection';
      passphrase: string;
      securitySecret?: Uint8Array;
      newPassphrase: string;
      securityKey: 'keep' | 'remove' | NewSecurityKey;
    }
  | { kind: 'startDirect'; member: MemberId }
  | { kind: 'createGroup'; name: string; members: MemberId[] }
  | { kind: 'addMember'; conversation: ConversationId; member: MemberId }
  | { kind: 'removeMember'; conversation: ConversationId; member: MemberId }
  | { kind: 'leave'; conversation: ConversationId }
  | { kind: 'removeContact'; member: MemberId }
  | { kind: 'sendText'; conversation: ConversationId; text: string }
  | { kind: 'edit'; conversation: ConversationId; message: string; text: string }
  | { kind: 'delete'; conversation: ConversationId; message: string }
  | { kind: 'markRead'; conversation: ConversationId; messages: string[] }
  | { kind: 'typing'; conversation: ConversationId; typing: boolean }
  | { kind: 'setTimer'; conversation: ConversationId; seconds: number }
  | { kind: 'safetyNumber'; member: MemberId }
  | { kind: 'setVerified'; member: MemberId; verified: boolean }
  // WebRTC: the page owns RTCPeerConnection (window-only); the worker owns what the connection is bound to.
  | { kind: 'iceServers' }
  | { kind: 'rtcOffer'; member: MemberId; sdp: string }
  | { kind: 'rtcAnswer'; member: MemberId; sdp: string }
  /** A candidate gathered after the offer or answer left (trickled, inside MLS as the SDP). */
  | { kind: 'rtcCandidate'; member: MemberId; candidate: string }
  | { kind: 'rtcVerify'; member: MemberId; certificate: Uint8Array }
  | { kind: 'rtcHangup'; member: MemberId }
  | { kind: 'channel'; member: MemberId; open: boolean }
  | { kind: 'channelData'; member: MemberId; bytes: Uint8Array }
  /** The DataChannel with `member`, transferred: the worker carries its bytes from now on. */
  | { kind: 'adoptChannel'; member: MemberId; channel: RTCDataChannel }
  /** The connection with `member` ended before its channel opened: the worker closes the channel it holds. */
  | { kind: 'dropChannel'; member: MemberId }
  // Files: the page hands the worker the File the member picked (structured clone, read in slices there).
  | { kind: 'sendFile'; member: MemberId; file: File }
  /** A file to every other member of a group: one transfer each, over each pair's connection. */
  | { kind: 'sendGroupFile'; group: ConversationId; file: File }
  | { kind: 'resumeFile'; transfer: string; file: File }
  | { kind: 'acceptFile'; transfer: string }
  | { kind: 'cancelFile'; transfer: string }
  | { kind: 'holdFile'; transfer: string; held: boolean }
  | { kind: 'forgetFile'; transfer: string }
  // Audio and video calls: ringing and ending travel inside MLS; media on the contact's connection.
  | { kind: 'ring'; member: MemberId; video: boolean }
  | { kind: 'answerRing'; member: MemberId; ring: string; accept: boolean }
  | { kind: 'endRing'; member: MemberId; ring: string; busy: boolean }
  // Group calls: a mesh over each pair's connection; ringing, joining and leaving go to the whole group.
  | { kind: 'ringGroup'; group: ConversationId; video: boolean }
  | { kind: 'joinGroupCall'; group: ConversationId; ring: string }
  | { kind: 'leaveGroupCall'; group: ConversationId; ring: string }
  /** A decrypted copy of a received file (a disk-backed File, deleted a minute later), to open or save. */
  | { kind: 'openFile'; transfer: string; name: string };

/** Which security key (WebAuthn credential) opens this device's key store, and the PRF input it is asked for.
 * Neither is secret: they name the key, the key holds the secret. */
export interface SecurityKeyRef {
  credential: Uint8Array;
  salt: Uint8Array;
}

/** A security key added at enrollment, with its PRF output (32 bytes, the key store's possession segment). */
export interface NewSecurityKey extends SecurityKeyRef {
  secret: Uint8Array;
}

export interface Request {
  id: number;
  command: Command;
}

/** Where the member is: no key store on this device, locked, open, or another tab holds it. */
export type Phase =
  | { phase: 'starting' }
  | { phase: 'enroll' }
  | { phase: 'locked'; bubble: string; retryAt: number; securityKey: SecurityKeyRef | null }
  | { phase: 'open' }
  | { phase: 'otherTab' }
  | { phase: 'unsupported'; reason: string };

export interface DirectoryEntry {
  member: MemberId;
  displayName: string;
  categories: string[];
  online: boolean;
  /** Something we sent waits for them in the bubble (they are away). */
  waiting: boolean;
  publicKey: string;
  verified: boolean;
  keyChanged: boolean;
}

export interface ChatMessage {
  id: string;
  from: MemberId;
  text: string;
  sent_at_ms: number;
  edited: boolean;
  deleted: boolean;
  expires_at_ms: number | null;
  receipts: Record<MemberId, string>;
}

export interface Conversation {
  id: ConversationId;
  kind: 'direct' | 'group' | 'pending';
  name: string | null;
  members: MemberId[];
  history: ChatMessage[];
  /** A group's call under way: who is in it, so a member can join. */
  call: GroupCallView | null;
  /** Messages disappear this many seconds after they were sent (any member sets it), or never. */
  timer: number | null;
}

export interface GroupCallView {
  ring: string;
  video: boolean;
  caller: MemberId;
  participants: MemberId[];
}

/** What the bubble's administrators require (crates/proto/src/policy.rs); client-core enforces it too. */
export interface Policy {
  masked_by_default: boolean;
  disappear_within_secs: number;
  files_allowed: boolean;
  max_file_bytes: number;
  calls_allowed: boolean;
  relay_only: boolean;
}

/** A file transfer, or a file kept (received files stay encrypted on the device until opened). */
export interface FileItem {
  transfer: string;
  conversation: ConversationId;
  /** The group it was sent to (shown there); null for a 1:1 file. */
  group: ConversationId | null;
  peer: MemberId;
  outgoing: boolean;
  name: string;
  size: number;
  sha256: string;
  /** asked: offered to us, not answered; offered: we offered, not answered; moving; done. */
  state: 'asked' | 'offered' | 'moving' | 'done';
  bytes: number;
  heldByUs: boolean;
  heldByThem: boolean;
  at: number;
  /** Ours, under way, and the page that had the file was reloaded: the member picks it again to go on. */
  needsFile?: boolean;
}

export interface View {
  me: { member: MemberId; displayName: string; bubble: string; publicKey: string };
  signaling: string;
  directory: DirectoryEntry[];
  conversations: Conversation[];
  policy: Policy;
  /** The member's key fingerprint: their half of every safety number (the console shows the same digits). */
  fingerprint: string;
  files: FileItem[];
  /** How long the bubble keeps what is sent to a member who is away; null when it keeps nothing. */
  mailboxTtlMs: number | null;
  /** Messages sent to this member that expired in the bubble before it came back. */
  missedWhileAway: number;
}

export type Update =
  | { kind: 'reply'; id: number; ok: true; value: unknown }
  | { kind: 'reply'; id: number; ok: false; error: string }
  | { kind: 'phase'; phase: Phase }
  | { kind: 'view'; view: View }
  | { kind: 'notice'; notice: { type: string; [key: string]: unknown } }
  /** An envelope (MLS ciphertext) for the DataChannel with `to`, when the page carries it. */
  | { kind: 'channelSend'; to: MemberId; bytes: Uint8Array }
  /** The DataChannel the worker holds opened, closed, or refused a send (its buffer full). */
  | { kind: 'channelEvent'; member: MemberId; event: 'open' | 'closed' | 'failed' };

/** What the worker asks of the page's WebRTC side (notices of these types, checked by {@link parseRtcNotice}). */
export type RtcNotice =
  | { type: 'rtcWanted'; peer: MemberId; afterMs?: number }
  | { type: 'rtcOffer'; peer: MemberId; sdp: string }
  | { type: 'rtcAnswer'; peer: MemberId; sdp: string }
  | { type: 'rtcCandidate'; peer: MemberId; candidate: string }
  | { type: 'rtcHangup'; peer: MemberId };

// ---- run-time checks ----

const HEX32 = /^[0-9a-f]{32}$/;
const MAX_TEXT = 64 * 1024;
/** A complete SDP with gathered candidates stays well below this. */
const MAX_SDP = 32 * 1024;
/** One ICE `candidate:` line (client-core refuses more than 1 KiB, or anything that could be another SDP line). */
const CANDIDATE = /^candidate:[\x21-\x7e ]{1,1014}$/;
/** The largest envelope either side puts on a DataChannel (client-core's file chunks included). */
const MAX_CHANNEL_BYTES = 256 * 1024;
/** A DER certificate. */
const MAX_CERTIFICATE = 16 * 1024;
/** A WebAuthn credential id is at most 1023 bytes. */
const MAX_CREDENTIAL = 1023;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
function isId(v: unknown): v is string {
  return typeof v === 'string' && HEX32.test(v);
}
function isText(v: unknown, max = MAX_TEXT): v is string {
  return typeof v === 'string' && v.length <= max;
}
function isCandidate(v: unknown): v is string {
  return typeof v === 'string' && CANDIDATE.test(v);
}
function isBytes(v: unknown, max: number): v is Uint8Array {
  return v instanceof Uint8Array && v.byteLength > 0 && v.byteLength <= max;
}
function isSecurityKeyRef(v: unknown): v is SecurityKeyRef {
  return isObject(v) && isBytes(v.credential, MAX_CREDENTIAL) && isBytes(v.salt, 32) && v.salt.byteLength === 32;
}
function isSecret(v: unknown): v is Uint8Array {
  return isBytes(v, 32) && v.byteLength === 32;
}
function isFile(v: unknown): v is File {
  return typeof File !== 'undefined' && v instanceof File;
}
function isIdList(v: unknown): v is string[] {
  return Array.isArray(v) && v.length <= 1000 && v.every(isId);
}

/** The worker's check of what the page sends: a command it understands, with well-formed fields, or null. */
export function parseRequest(data: unknown): Request | null {
  if (!isObject(data) || typeof data.id !== 'number' || !Number.isSafeInteger(data.id)) return null;
  const c = data.command;
  if (!isObject(c) || typeof c.kind !== 'string') return null;
  const ok = ((): boolean => {
    switch (c.kind) {
      case 'hello':
      case 'lock':
      case 'iceServers':
        return true;
      case 'rtcOffer':
      case 'rtcAnswer':
        return isId(c.member) && isText(c.sdp, MAX_SDP) && c.sdp.length > 0;
      case 'rtcCandidate':
        return isId(c.member) && isCandidate(c.candidate);
      case 'rtcVerify':
        return isId(c.member) && isBytes(c.certificate, MAX_CERTIFICATE);
      case 'rtcHangup':
        return isId(c.member);
      case 'channel':
        return isId(c.member) && typeof c.open === 'boolean';
      case 'channelData':
        return isId(c.member) && isBytes(c.bytes, MAX_CHANNEL_BYTES);
      case 'adoptChannel':
        return isId(c.member) && typeof RTCDataChannel !== 'undefined' && c.channel instanceof RTCDataChannel;
      case 'dropChannel':
        return isId(c.member);
      case 'enroll':
        return (
          isText(c.link, 4096) &&
          isText(c.passphrase, 1024) &&
          (c.securityKey === undefined || (isObject(c.securityKey) && isSecurityKeyRef(c.securityKey) && isSecret(c.securityKey.secret)))
        );
      case 'unlock':
        return isText(c.passphrase, 1024) && (c.securitySecret === undefined || isSecret(c.securitySecret));
      case 'protection':
        return true;
      case 'changeProtection':
        return (
          isText(c.passphrase, 1024) &&
          c.passphrase.length > 0 &&
          isText(c.newPassphrase, 1024) &&
          (c.securitySecret === undefined || isSecret(c.securitySecret)) &&
          (c.securityKey === 'keep' ||
            c.securityKey === 'remove' ||
            (isObject(c.securityKey) && isSecurityKeyRef(c.securityKey) && isSecret(c.securityKey.secret)))
        );
      case 'startDirect':
      case 'removeContact':
      case 'safetyNumber':
        return isId(c.member);
      case 'setVerified':
        return isId(c.member) && typeof c.verified === 'boolean';
      case 'createGroup':
        return isText(c.name, 200) && isIdList(c.members);
      case 'addMember':
      case 'removeMember':
        return isId(c.conversation) && isId(c.member);
      case 'leave':
        return isId(c.conversation);
      case 'sendText':
        return isId(c.conversation) && isText(c.text);
      case 'edit':
        return isId(c.conversation) && isId(c.message) && isText(c.text);
      case 'delete':
        return isId(c.conversation) && isId(c.message);
      case 'markRead':
        return isId(c.conversation) && isIdList(c.messages);
      case 'typing':
        return isId(c.conversation) && typeof c.typing === 'boolean';
      case 'setTimer':
        return isId(c.conversation) && typeof c.seconds === 'number' && Number.isInteger(c.seconds) && c.seconds >= 0;
      case 'sendFile':
        return isId(c.member) && isFile(c.file);
      case 'sendGroupFile':
        return isId(c.group) && isFile(c.file);
      case 'resumeFile':
        return isId(c.transfer) && isFile(c.file);
      case 'acceptFile':
      case 'cancelFile':
      case 'forgetFile':
        return isId(c.transfer);
      case 'holdFile':
        return isId(c.transfer) && typeof c.held === 'boolean';
      case 'openFile':
        return isId(c.transfer) && isText(c.name, 1024);
      case 'ring':
        return isId(c.member) && typeof c.video === 'boolean';
      case 'answerRing':
        return isId(c.member) && isId(c.ring) && typeof c.accept === 'boolean';
      case 'endRing':
        return isId(c.member) && isId(c.ring) && typeof c.busy === 'boolean';
      case 'ringGroup':
        return isId(c.group) && typeof c.video === 'boolean';
      case 'joinGroupCall':
      case 'leaveGroupCall':
        return isId(c.group) && isId(c.ring);
      default:
        return false;
    }
  })();
  return ok ? (data as unknown as Request) : null;
}

function isPhase(v: unknown): v is Phase {
  if (!isObject(v)) return false;
  switch (v.phase) {
    case 'starting':
    case 'enroll':
    case 'open':
    case 'otherTab':
      return true;
    case 'locked':
      return typeof v.bubble === 'string' && typeof v.retryAt === 'number' && (v.securityKey === null || isSecurityKeyRef(v.securityKey));
    case 'unsupported':
      return typeof v.reason === 'string';
    default:
      return false;
  }
}

function isView(v: unknown): v is View {
  return (
    isObject(v) &&
    isObject(v.me) &&
    isId(v.me.member) &&
    typeof v.signaling === 'string' &&
    Array.isArray(v.directory) &&
    v.directory.every((e) => isObject(e) && isId(e.member) && typeof e.displayName === 'string') &&
    Array.isArray(v.conversations) &&
    v.conversations.every((c) => isObject(c) && isId(c.id) && Array.isArray(c.history) && isIdList(c.members)) &&
    isPolicy(v.policy) &&
    typeof v.fingerprint === 'string' &&
    Array.isArray(v.files) &&
    v.files.every(isFileItem)
  );
}

function isFileItem(f: unknown): f is FileItem {
  return (
    isObject(f) &&
    isId(f.transfer) &&
    isId(f.conversation) &&
    (f.group === null || isId(f.group)) &&
    isId(f.peer) &&
    typeof f.outgoing === 'boolean' &&
    typeof f.name === 'string' &&
    typeof f.size === 'number' &&
    typeof f.bytes === 'number' &&
    typeof f.sha256 === 'string' &&
    ['asked', 'offered', 'moving', 'done'].includes(f.state as string) &&
    typeof f.heldByUs === 'boolean' &&
    typeof f.heldByThem === 'boolean' &&
    typeof f.at === 'number'
  );
}

function isPolicy(p: unknown): p is Policy {
  return (
    isObject(p) &&
    typeof p.masked_by_default === 'boolean' &&
    typeof p.disappear_within_secs === 'number' &&
    typeof p.files_allowed === 'boolean' &&
    typeof p.max_file_bytes === 'number' &&
    typeof p.calls_allowed === 'boolean' &&
    typeof p.relay_only === 'boolean'
  );
}

/** The page's check of what the worker posts. */
/** The page's check of the worker's answer to `sendGroupFile`: the members the file could not be offered to. */
export function parseGroupSend(value: unknown): MemberId[] | null {
  if (!isObject(value) || !Array.isArray(value.failed)) return null;
  const members = value.failed.map((f: unknown) => (isObject(f) ? f.member : undefined));
  return members.every(isId) ? members : null;
}

/** The page's check of the worker's answer to `protection`. */
export function parseProtection(value: unknown): { securityKey: SecurityKeyRef | null } | null {
  if (!isObject(value)) return null;
  return value.securityKey === null || isSecurityKeyRef(value.securityKey) ? { securityKey: value.securityKey } : null;
}

export function parseUpdate(data: unknown): Update | null {
  if (!isObject(data)) return null;
  switch (data.kind) {
    case 'reply':
      if (typeof data.id !== 'number' || typeof data.ok !== 'boolean') return null;
      if (!data.ok && typeof data.error !== 'string') return null;
      return data as unknown as Update;
    case 'phase':
      return isPhase(data.phase) ? (data as unknown as Update) : null;
    case 'view':
      return isView(data.view) ? (data as unknown as Update) : null;
    case 'notice':
      return isObject(data.notice) && typeof data.notice.type === 'string' ? (data as unknown as Update) : null;
    case 'channelSend':
      return isId(data.to) && isBytes(data.bytes, MAX_CHANNEL_BYTES) ? (data as unknown as Update) : null;
    case 'channelEvent':
      return isId(data.member) && (data.event === 'open' || data.event === 'closed' || data.event === 'failed')
        ? (data as unknown as Update)
        : null;
    default:
      return null;
  }
}

/** What the worker says of calls (notices of these types, checked by {@link parseCallNotice}). */
export type CallNotice =
  | { type: 'callRing'; peer: MemberId; ring: string; video: boolean }
  | { type: 'callAccepted'; peer: MemberId; ring: string }
  | { type: 'callEnded'; peer: MemberId; ring: string; reason: 'hung_up' | 'declined' | 'busy' | 'not_allowed' }
  | {
      type: 'groupCallRing' | 'groupCallJoined' | 'groupCallLeft';
      group: ConversationId;
      peer: MemberId;
      ring: string;
      video: boolean;
      caller: MemberId | null;
      participants: MemberId[];
    };

export function parseCallNotice(notice: { type: string; [key: string]: unknown }): CallNotice | null {
  switch (notice.type) {
    case 'callRing':
      return isId(notice.peer) && isId(notice.ring) && typeof notice.video === 'boolean' ? (notice as unknown as CallNotice) : null;
    case 'callAccepted':
      return isId(notice.peer) && isId(notice.ring) ? (notice as unknown as CallNotice) : null;
    case 'callEnded':
      return isId(notice.peer) && isId(notice.ring) && ['hung_up', 'declined', 'busy', 'not_allowed'].includes(notice.reason as string)
        ? (notice as unknown as CallNotice)
        : null;
    case 'groupCallRing':
    case 'groupCallJoined':
    case 'groupCallLeft':
      return isId(notice.group) &&
        isId(notice.peer) &&
        isId(notice.ring) &&
        typeof notice.video === 'boolean' &&
        (notice.caller === null || isId(notice.caller)) &&
        isIdList(notice.participants)
        ? (notice as unknown as CallNotice)
        : null;
    default:
      return null;
  }
}

/** The page's check of a WebRTC notice: one it acts on, well-formed, or null. */
export function parseRtcNotice(notice: { type: string; [key: string]: unknown }): RtcNotice | null {
  switch (notice.type) {
    case 'rtcWanted':
      return isId(notice.peer) &&
        (notice.afterMs === undefined || (typeof notice.afterMs === 'number' && notice.afterMs >= 0 && notice.afterMs <= 60_000))
        ? (notice as unknown as RtcNotice)
        : null;
    case 'rtcHangup':
      return isId(notice.peer) ? (notice as unknown as RtcNotice) : null;
    case 'rtcOffer':
    case 'rtcAnswer':
      return isId(notice.peer) && isText(notice.sdp, MAX_SDP) ? (notice as unknown as RtcNotice) : null;
    case 'rtcCandidate':
      return isId(notice.peer) && isCandidate(notice.candidate) ? (notice as unknown as RtcNotice) : null;
    default:
      return null;
  }
}
