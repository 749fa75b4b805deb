/// <reference lib="webworker" />
// Files at rest, in the worker: every chunk of a received file is kept as it arrived, sealed under the
// transfer's key (which only the unlocked key store holds), in the origin-private file system (OPFS), one file
// per transfer, chunk i at i × (chunk size + 16). Nothing is ever written there in clear, except a decrypted
// copy the member asked for (under exports/), deleted a minute later and at every start.
//
// Synchronous access handles (worker-only) let chunks be written as they arrive, in the step that sends an
// acknowledgement, before that acknowledgement leaves (one write per batch of chunks rather than per chunk): what
// the sender believes kept survives a reload, a closed tab or a crashed browser. Syncing to the disk itself
// (`flush`, an fsync) is slower and comes at most once a second, and always before the transfer completes: a power
// cut loses at most the last second, which the receiver asks for again (the sender keeps every chunk's tag, so the
// bytes sent again under a nonce must be the same).

const SEALED_DIR = 'sealed';
const EXPORT_DIR = 'exports';
/** Poly1305 tag: each sealed chunk is its plaintext plus this. */
const TAG = 16;
/** Decrypted copies live this long, for the browser to take the download or open the tab. */
const EXPORT_LIFETIME_MS = 60_000;

export interface Layout {
  size: number;
  chunkSize: number;
  chunks: number;
  sha256: string;
}

async function dir(name: string): Promise<FileSystemDirectoryHandle> {
  const root = await navigator.storage.getDirectory();
  return root.getDirectoryHandle(name, { create: true });
}

/** Length of chunk `index` once sealed. */
function sealedLen(layout: Layout, index: number): number {
  return Math.min(layout.chunkSize, layout.size - index * layout.chunkSize) + TAG;
}

/** Where chunk `index` starts in the sealed file. */
function sealedAt(layout: Layout, index: number): number {
  return index * (layout.chunkSize + TAG);
}

/** The sealed chunks of incoming files, each behind one open synchronous handle while the file is in use. */
export class SealedFiles {
  private readonly handles = new Map<string, FileSystemSyncAccessHandle>();
  private readonly opening = new Map<string, Promise<FileSystemSyncAccessHandle>>();

  /** The handle of a transfer's sealed file (created empty). */
  async handle(transfer: string): Promise<FileSystemSyncAccessHandle> {
    const open = this.handles.get(transfer);
    if (open) return open;
    let pending = this.opening.get(transfer);
    if (!pending) {
      pending = (async () => {
        const file = await (await dir(SEALED_DIR)).getFileHandle(`${transfer}.sealed`, { create: true });
        return file.createSyncAccessHandle();
      })();
      this.opening.set(transfer, pending);
    }
    try {
      const handle = await pending;
      this.handles.set(transfer, handle);
      return handle;
    } finally {
      this.opening.delete(transfer);
    }
  }

  /** Written chunks are synced to disk at most this often (and whenever {@link flush} is asked to). */
  static readonly SYNC_EVERY_MS = 1000;

  /** Transfers whose file was given its full size (one allocation rather than one per write). */
  private readonly sized = new Set<string>();

  /** Chunks written since the last flush, per transfer: contiguous runs go to disk in one write. */
  private readonly pending = new Map<string, { at: number; parts: Uint8Array[]; bytes: number }>();

  /**
   * Keeps chunk `index` as it arrived (sealed). It reaches the disk at the next {@link flush}, which must come
   * before its acknowledgement leaves.
   */
  write(transfer: string, layout: Layout, index: number, sealed: Uint8Array): void {
    if (sealed.byteLength !== sealedLen(layout, index)) throw new Error('sealed chunk of the wrong length');
    if (!this.sized.has(transfer)) {
      // The whole file's room at once: growing it write by write cost Chromium a storage allocation each (about
      // a third of the time the receiving worker spent writing). Past the last kept chunk it reads as zeros,
      // which do not open: a replay stops there, as at a torn write.
      const handle = this.handles.get(transfer);
      const full = sealedAt(layout, layout.chunks);
      if (handle && handle.getSize() < full) handle.truncate(full);
      this.sized.add(transfer);
    }
    const at = sealedAt(layout, index);
    const run = this.pending.get(transfer);
    if (run && run.at + run.bytes === at) {
      run.parts.push(sealed);
      run.bytes += sealed.byteLength;
      return;
    }
    if (run) this.flushRun(transfer);
    this.pending.set(transfer, { at, parts: [sealed], bytes: sealed.byteLength });
  }

  private flushRun(transfer: string): void {
    const run = this.pending.get(transfer);
    const handle = this.handles.get(transfer);
    this.pending.delete(transfer);
    if (!run || !handle) return;
    const all = new Uint8Array(run.bytes);
    let offset = 0;
    for (const part of run.parts) {
      all.set(part, offset);
      offset += part.byteLength;
    }
    if (handle.write(all, { at: run.at }) !== all.byteLength) throw new Error('the device is out of storage space');
  }

  /** When the files were last synced to disk ({@link flush}). */
  private synced = 0;

  /**
   * Writes what is pending; syncs it to disk (fsync) if `sync`, or if the last sync is
   * {@link SealedFiles.SYNC_EVERY_MS} old. A sync per acknowledgement (every 256 KiB) was the receiving worker's
   * largest cost on a 2-core machine (BENCHMARKS.md, `bench browser-media`, 2026-12-07, night).
   */
  flush(sync = false): void {
    for (const transfer of [...this.pending.keys()]) this.flushRun(transfer);
    const now = performance.now();
    if (!sync && now - this.synced < SealedFiles.SYNC_EVERY_MS) return;
    this.synced = now;
    for (const handle of this.handles.values()) handle.flush();
  }

  /**
   * Feeds `replay` the chunks kept of an incoming transfer, in order, until one is missing or refused; the
   * file is cut there (a torn write at a crash). Returns how many chunks were kept.
   */
  async replay(transfer: string, layout: Layout, replay: (index: number, sealed: Uint8Array) => boolean): Promise<number> {
    const handle = await this.handle(transfer);
    const size = handle.getSize();
    let index = 0;
    for (; index < layout.chunks; index++) {
      const at = sealedAt(layout, index);
      const len = sealedLen(layout, index);
      if (at + len > size) break;
      const sealed = new Uint8Array(len);
      if (handle.read(sealed, { at }) !== len || !replay(index, sealed)) break;
    }
    handle.truncate(sealedAt(layout, index));
    handle.flush();
    this.sized.delete(transfer);
    return index;
  }

  /** Closes a finished file's handle (its bytes stay, pending ones written first). */
  close(transfer: string): void {
    this.flushRun(transfer);
    this.sized.delete(transfer);
    this.handles.get(transfer)?.flush();
    this.handles.get(transfer)?.close();
    this.handles.delete(transfer);
  }

  closeAll(): void {
    this.flush(true);
    this.sized.clear();
    for (const handle of this.handles.values()) handle.close();
    this.handles.clear();
  }

  /** Deletes what was kept of a transfer. */
  async remove(transfer: string): Promise<void> {
    this.pending.delete(transfer);
    this.close(transfer);
    await (await dir(SEALED_DIR)).removeEntry(`${transfer}.sealed`).catch(() => undefined);
  }

  /**
   * A decrypted copy of a received file, for the member to open or save: written under exports/ chunk by chunk
   * (never whole in memory), handed to the page as a disk-backed File, deleted after a minute.
   */
  async decrypt(transfer: string, name: string, layout: Layout, open: (index: number, sealed: Uint8Array) => Uint8Array): Promise<File> {
    const source = await this.handle(transfer);
    const exports = await dir(EXPORT_DIR);
    const exportName = `${transfer}-${Date.now()}`;
    const target = await (await exports.getFileHandle(exportName, { create: true })).createSyncAccessHandle();
    try {
      target.truncate(0);
      let at = 0;
      for (let index = 0; index < layout.chunks; index++) {
        const len = sealedLen(layout, index);
        const sealed = new Uint8Array(len);
        if (source.read(sealed, { at: sealedAt(layout, index) }) !== len) throw new Error('the kept file is incomplete');
        const plain = open(index, sealed);
        at += target.write(plain as Uint8Array<ArrayBuffer>, { at });
      }
      target.flush();
    } finally {
      target.close();
    }
    setTimeout(() => void exports.removeEntry(exportName).catch(() => undefined), EXPORT_LIFETIME_MS);
    const file = await (await exports.getFileHandle(exportName)).getFile();
    return new File([file], name, { type: file.type });
  }

  /** Deletes decrypted copies left by an earlier run (the tab closed before their minute was up). */
  static async clearExports(): Promise<void> {
    const root = await navigator.storage.getDirectory();
    await root.removeEntry(EXPORT_DIR, { recursive: true }).catch(() => undefined);
  }
}

/**
 * Reads an outgoing file ahead of the chunks asked for, in 1 MiB blocks read asynchronously (never the whole file
 * at once, at most {@link FileSource.AHEAD} blocks in memory). A synchronous read (FileReaderSync) blocked the
 * worker on the browser's disk for each block, and with it the acknowledgements that let the window go on: the
 * transfer stalled on every block. `ready` is called when a block lands (the worker pumps again).
 */
export class FileSource {
  static readonly BLOCK = 1 << 20;
  static readonly AHEAD = 8;
  private readonly blocks = new Map<number, Uint8Array>();
  private readonly loading = new Set<number>();
  private failed: unknown;

  constructor(
    readonly file: File,
    private readonly ready: () => void,
  ) {}

  /**
   * Bytes `offset..offset + len` if they are in memory (reading on ahead), or `undefined` while they are being
   * read. Throws if the file could not be read (moved, changed or deleted since it was picked).
   */
  read(offset: number, len: number): Uint8Array | undefined {
    if (this.failed !== undefined) throw new Error(`the file can no longer be read: ${String(this.failed)}`);
    const first = Math.floor(offset / FileSource.BLOCK);
    const last = Math.floor((offset + len - 1) / FileSource.BLOCK);
    for (const block of [...this.blocks.keys()]) if (block < first) this.blocks.delete(block);
    this.readAhead(first);
    const parts: Uint8Array[] = [];
    for (let block = first; block <= last; block++) {
      const bytes = this.blocks.get(block);
      if (!bytes) return undefined;
      parts.push(bytes);
    }
    const start = offset - first * FileSource.BLOCK;
    if (parts.length === 1) return parts[0]?.subarray(start, start + len);
    const out = new Uint8Array(len);
    let at = 0;
    let from = start;
    for (const part of parts) {
      const piece = part.subarray(from, Math.min(part.byteLength, from + len - at));
      out.set(piece, at);
      at += piece.byteLength;
      from = 0;
    }
    return out;
  }

  private readAhead(from: number): void {
    const end = Math.min(from + FileSource.AHEAD, Math.ceil(this.file.size / FileSource.BLOCK));
    for (let block = from; block < end; block++) {
      if (this.blocks.has(block) || this.loading.has(block)) continue;
      this.loading.add(block);
      const at = block * FileSource.BLOCK;
      this.file
        .slice(at, Math.min(this.file.size, at + FileSource.BLOCK))
        .arrayBuffer()
        .then(
          (buffer) => this.blocks.set(block, new Uint8Array(buffer)),
          (err: unknown) => {
            this.failed = err instanceof Error ? err.message : err;
          },
        )
        .finally(() => {
          this.loading.delete(block);
          this.ready();
        });
    }
  }
}
