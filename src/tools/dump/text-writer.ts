// What the XML, JSON and human-readable writers share: each event becomes a piece of text for
// the sink, and mappings are merged into runs by thin_dump's rule (events.ts RunMerger) before a
// format sees them, so every format lists the same runs. A format says only what text each event
// is; the run in progress is written before the device's closing text. A format whose run lines
// are fixed ASCII text and numbers (XML: a line per mapping of a scattered pool) writes them as
// bytes into an AsciiPiece instead of returning text; the piece is handed on before any text.
import { AsciiPiece } from './ascii-piece.ts';
import { RunMerger, type DeviceBegin, type DumpBadRange, type DumpVisitor, type Mapping, type SuperblockBegin, type VisitResult } from './events.ts';
import type { TextSink } from './sink.ts';
import type { ExtentColumns } from '../../pool/trees.ts';

export abstract class TextDumpWriter implements DumpVisitor {
  readonly #out: TextSink;
  readonly #piece: AsciiPiece;
  readonly #runs: RunMerger;

  constructor(out: TextSink) {
    this.#out = out;
    const piece = new AsciiPiece(out);
    this.#piece = piece;
    this.#runs = new RunMerger((run) => {
      const text = this.runLine(run, piece);
      return text === undefined ? piece.endLine() : this.#write(text);
    });
  }

  superblockBegin(superblock: SuperblockBegin): VisitResult {
    return this.#write(this.superblockBeginText(superblock));
  }

  deviceBegin(device: DeviceBegin): VisitResult {
    return this.#write(this.deviceBeginText(device));
  }

  mapping(mapping: Mapping): VisitResult {
    return this.#runs.add(mapping);
  }

  async mappingColumns(columns: ExtentColumns): Promise<void> {
    const { count, keys, dataBlocks, lengths, times } = columns;
    const runs = this.#runs;
    for (let index = 0; index < count; index++) {
      const result = runs.addValues(keys[index]!, dataBlocks[index]!, lengths[index]!, times[index]!);
      if (result !== undefined) await result;
    }
  }

  deviceEnd(): VisitResult {
    // The last run is emitted here, before the closing text is asked for (a format may count runs).
    const pending = this.#runs.flush();
    const text = this.deviceEndText();
    if (pending !== undefined) return pending.then(() => this.#write(text));
    return this.#write(text);
  }

  badRange(range: DumpBadRange): VisitResult {
    return this.#write(this.badRangeText(range));
  }

  superblockEnd(): VisitResult {
    return this.#write(this.superblockEndText());
  }

  /** Text after the run lines written so far (those in the piece are handed on first). */
  #write(text: string): VisitResult {
    const handed = this.#piece.flush();
    return handed === undefined ? this.#out.write(text) : handed.then(() => this.#out.write(text));
  }

  protected abstract superblockBeginText(superblock: SuperblockBegin): string;
  protected abstract deviceBeginText(device: DeviceBegin): string;
  /**
   * One merged run (a single mapping when its length is 1): its text, or undefined when the line
   * was written into `piece`.
   */
  protected abstract runLine(run: Mapping, piece: AsciiPiece): string | undefined;
  protected abstract deviceEndText(): string;
  protected abstract badRangeText(range: DumpBadRange): string;
  protected abstract superblockEndText(): string;
}
