/// <reference lib="webworker" />
// Files at rest, in the worker: every chunk of a received file is kept as it arrived, sealed under the
// transfer's key (which only the unlocked key store holds), in the origin-private file system (OPFS), one file
// per transfer, chunk i at i × (chunk size + 16). Nothing is ever written there in clear, except a decrypted
// copy the member asked for (under exports/), deleted a minute later and at every start.
//
// Synchronous access handles (worker-only) let chunks be written as they arrive and flushed, in the step that
// sends an acknowledgement, before that acknowledgement leaves (one flush per batch of chunks rather than per
// chunk): what the sender believes kept is kept.

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

  /** Chunks written since the last flush, per transfer: contiguous runs go to disk in one write. */
  private readonly pending = new Map<string, { at: number; parts: Uint8Array[]; bytes: number }>();

  /**
   * Keeps chunk `index` as it arrived (sealed). It reaches the disk at the next {@link flush}, which must come
   * before its acknowledgement leaves.
   */
  write(transfer: string, layout: Layout, index: number, sealed: Uint8Array): void {
    if (sealed.byteLength !== sealedLen(layout, index)) throw new Error('sealed chunk of the wrong length');
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

  /** Writes what is pending and makes it durable. */
  flush(): void {
    for (const transfer of [...this.pending.keys()]) this.flushRun(transfer);
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
    return index;
  }

  /** Closes a finished file's handle (its bytes stay, pending ones written first). */
  close(transfer: string): void {
    this.flushRun(transfer);
    this.handles.get(transfer)?.flush();
    this.handles.get(transfer)?.close();
    this.handles.delete(transfer);
  }

  closeAll(): void {
    this.flush();
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
 * Reads an outgoing file in 1 MiB slices (FileReaderSync: synchronous in workers, so a step can read, seal and
 * queue a window of chunks without yielding), never the whole file at once.
 */
export class FileSource {
  private static readonly BLOCK = 1 << 20;
  private readonly reader = new FileReaderSync();
  private blockAt = -1;
  private block = new Uint8Array(0);

  constructor(readonly file: File) {}

  read(offset: number, len: number): Uint8Array {
    const end = offset + len;
    if (offset < this.blockAt || end > this.blockAt + this.block.byteLength) {
      this.blockAt = offset - (offset % FileSource.BLOCK);
      const blockEnd = Math.min(this.file.size, Math.max(this.blockAt + FileSource.BLOCK, end));
      this.block = new Uint8Array(this.reader.readAsArrayBuffer(this.file.slice(this.blockAt, blockEnd)));
    }
    return this.block.subarray(offset - this.blockAt, end - this.blockAt);
  }
}
