// A block file that passes every call on to another one. Wrappers extend it and override only the
// calls they watch or change (CountingBlockFile counts; tests record writes and syncs, fail on
// demand, ignore close), so each such file says what it changes and nothing else. The inner
// file keeps its own type for callers that reach past the BlockFile interface.
import type { BlockFile, SyncOptions } from './block-file.ts';

export class ForwardingBlockFile<Inner extends BlockFile = BlockFile> implements BlockFile {
  readonly inner: Inner;

  constructor(inner: Inner) {
    this.inner = inner;
  }

  get description(): string {
    return this.inner.description;
  }

  get fixedSize(): boolean {
    return this.inner.fixedSize === true;
  }

  sizeBytes(): number {
    return this.inner.sizeBytes();
  }

  readSync(target: Uint8Array, offsetBytes: number): void {
    this.inner.readSync(target, offsetBytes);
  }

  read(target: Uint8Array, offsetBytes: number): Promise<void> {
    return this.inner.read(target, offsetBytes);
  }

  write(source: Uint8Array, offsetBytes: number): Promise<void> {
    return this.inner.write(source, offsetBytes);
  }

  sync(options?: SyncOptions): Promise<void> {
    return this.inner.sync(options);
  }

  allocate(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.inner.allocate?.(offsetBytes, lengthBytes) ?? Promise.resolve();
  }

  punch(offsetBytes: number, lengthBytes: number): Promise<boolean> {
    return this.inner.punch?.(offsetBytes, lengthBytes) ?? Promise.resolve(false);
  }

  grow(sizeBytes: number): Promise<void> {
    return this.inner.grow(sizeBytes);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
