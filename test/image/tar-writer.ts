// A small tar writer for tests: ustar headers with pax records for what does not fit, so a test can
// build any archive it needs, including malformed ones (a wrong checksum, a cut, a '..' path).
import { createHash } from 'node:crypto';

export interface TarSpec {
  path: string;
  type?: 'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  data?: Uint8Array | string;
  linkPath?: string;
  major?: number;
  minor?: number;
  /** Extra pax records (key -> value bytes or text). */
  pax?: Record<string, string | Uint8Array>;
  /** Write this checksum instead of the right one. */
  badChecksum?: boolean;
}

const TYPE_FLAGS = { file: '0', hardlink: '1', symlink: '2', char: '3', block: '4', dir: '5', fifo: '6' } as const;

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, '0')}\0`;
}

function header(name: string, typeFlag: string, spec: TarSpec, size: number, linkName: string): Buffer {
  const block = Buffer.alloc(512);
  block.write(name, 0, 100, 'latin1');
  block.write(octal(spec.mode ?? (spec.type === 'dir' ? 0o755 : 0o644), 8), 100, 'latin1');
  block.write(octal(spec.uid ?? 0, 8), 108, 'latin1');
  block.write(octal(spec.gid ?? 0, 8), 116, 'latin1');
  block.write(octal(size, 12), 124, 'latin1');
  block.write(octal(spec.mtime ?? 1_600_000_000, 12), 136, 'latin1');
  block.write('        ', 148, 'latin1');
  block.write(typeFlag, 156, 'latin1');
  block.write(linkName, 157, 100, 'latin1');
  block.write('ustar\0' + '00', 257, 'latin1');
  block.write(octal(spec.major ?? 0, 8), 329, 'latin1');
  block.write(octal(spec.minor ?? 0, 8), 337, 'latin1');
  let sum = 0;
  for (const byte of block) sum += byte;
  block.write(octal(spec.badChecksum ? sum + 1 : sum, 7), 148, 'latin1');
  return block;
}

function pad(bytes: Uint8Array): Buffer {
  const padding = (512 - (bytes.length % 512)) % 512;
  return Buffer.concat([bytes, Buffer.alloc(padding)]);
}

function paxRecord(key: string, value: string | Uint8Array): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'latin1'), typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.from(value), Buffer.from('\n')]);
  let length = body.length + 1;
  while (String(length).length + body.length !== length) length = String(length).length + body.length;
  return Buffer.concat([Buffer.from(String(length)), body]);
}

/** One entry's blocks (a pax header first when needed). */
export function tarEntry(spec: TarSpec): Buffer {
  const type = spec.type ?? 'file';
  const data = typeof spec.data === 'string' ? Buffer.from(spec.data) : Buffer.from(spec.data ?? new Uint8Array(0));
  const pax: Record<string, string | Uint8Array> = { ...spec.pax };
  const pathBytes = Buffer.byteLength(spec.path, 'utf8');
  if (pathBytes > 100 || /[^\x20-\x7e]/.test(spec.path)) pax['path'] = spec.path;
  const linkPath = spec.linkPath ?? '';
  if (Buffer.byteLength(linkPath, 'utf8') > 100 || /[^\x20-\x7e]/.test(linkPath)) pax['linkpath'] = linkPath;
  const parts: Buffer[] = [];
  const paxEntries = Object.entries(pax);
  if (paxEntries.length > 0) {
    const body = Buffer.concat(paxEntries.map(([key, value]) => paxRecord(key, value)));
    parts.push(header('PaxHeaders/entry', 'x', { path: '', mode: 0o644 }, body.length, ''), pad(body));
  }
  const size = type === 'file' ? data.length : 0;
  parts.push(header(spec.path.slice(0, 100), TYPE_FLAGS[type], spec, size, linkPath.slice(0, 100)));
  if (size > 0) parts.push(pad(data));
  return Buffer.concat(parts);
}

/** A whole archive: the entries and the two end-of-archive blocks. */
export function tarArchive(specs: readonly TarSpec[]): Buffer {
  return Buffer.concat([...specs.map(tarEntry), Buffer.alloc(1024)]);
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export interface OciLayerSpec {
  /** The layer tar (uncompressed). */
  tar: Buffer;
  /** Stored gzip-compressed (mediaType tar+gzip). */
  gzip?: boolean;
}

/**
 * An OCI image layout archive (oci-layout, index.json, blobs/sha256/…) for layers applied in
 * order; `docker: true` adds manifest.json as `docker save` (Docker 25+) writes it.
 */
export function ociArchive(layers: readonly OciLayerSpec[], options: { docker?: boolean; gzipFn?: (bytes: Buffer) => Buffer; blobsFirst?: boolean } = {}): Buffer {
  const blobs = new Map<string, Buffer>();
  const addBlob = (bytes: Buffer): string => {
    const digest = sha256Hex(bytes);
    blobs.set(digest, bytes);
    return digest;
  };
  const layerDescriptors = layers.map((layer) => {
    const stored = layer.gzip ? options.gzipFn!(layer.tar) : layer.tar;
    return { digest: addBlob(stored), size: stored.length, diffId: sha256Hex(layer.tar), gzip: Boolean(layer.gzip) };
  });
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layerDescriptors.map((layer) => `sha256:${layer.diffId}`) } }));
  const configDigest = addBlob(config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${configDigest}`, size: config.length },
      layers: layerDescriptors.map((layer) => ({
        mediaType: layer.gzip ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.oci.image.layer.v1.tar',
        digest: `sha256:${layer.digest}`,
        size: layer.size,
      })),
    }),
  );
  const manifestDigest = addBlob(manifest);
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${manifestDigest}`, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'test:latest' } }] }));
  const specs: TarSpec[] = [{ path: 'blobs/', type: 'dir' }, { path: 'blobs/sha256/', type: 'dir' }];
  // Sorted as docker save writes its files: blobs come before index.json and manifest.json.
  for (const [digest, bytes] of [...blobs].sort(([a], [b]) => a.localeCompare(b))) specs.push({ path: `blobs/sha256/${digest}`, data: bytes });
  specs.push({ path: 'index.json', data: index });
  if (options.docker) {
    specs.push({
      path: 'manifest.json',
      data: JSON.stringify([{ Config: `blobs/sha256/${configDigest}`, RepoTags: ['test:latest'], Layers: layerDescriptors.map((layer) => `blobs/sha256/${layer.digest}`) }]),
    });
  }
  specs.push({ path: 'oci-layout', data: '{"imageLayoutVersion":"1.0.0"}' });
  return tarArchive(specs);
}
