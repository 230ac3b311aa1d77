// `docker save` archives and OCI image layouts: which files of the archive are the image's
// layers, in which order, and what each layer's uncompressed digest (diff_id) must be.
//
// A docker save archive has manifest.json ([{Config, RepoTags, Layers}]; Layers are
// "<id>/layer.tar" before Docker 25, "blobs/sha256/<hex>" since). An OCI layout has oci-layout,
// index.json and blobs/sha256/<hex>; index.json lists manifests (or an index of them per
// platform), a manifest lists the config and the layer blobs. The config's rootfs.diff_ids give
// each layer's sha256 after decompression: thinbd checks every layer against it.
import { createHash } from 'node:crypto';
import { ThinError } from '../errors.ts';

export interface ImageLayer {
  /** Path of the layer's file in the archive. */
  path: string;
  /** "sha256:<hex>" of the uncompressed layer tar. */
  diffId: string;
}

export interface ImageDescription {
  kind: 'docker' | 'oci';
  layers: ImageLayer[];
  /** "sha256:<hex>" of the config: the image id docker shows. */
  configDigest: string;
  tags: string[];
}

/** Paths that only a docker save archive or an OCI layout has at its top. */
export function looksLikeImageArchivePath(path: string): boolean {
  const clean = path.replace(/^\.\//, '');
  return (
    clean === 'manifest.json' ||
    clean === 'index.json' ||
    clean === 'oci-layout' ||
    clean === 'repositories' ||
    clean === 'blobs' ||
    clean === 'blobs/' ||
    clean.startsWith('blobs/sha256') ||
    /^[0-9a-f]{64}(\/|\.json$|\/(layer\.tar|json|VERSION)$)/.test(clean)
  );
}

/** The archive's own top directory ('./' or '.'), which `tar -C DIR -cf ARCHIVE .` writes first. */
export function isArchiveRoot(path: string): boolean {
  const clean = normalizeArchivePath(path);
  return clean === '' || clean === '.';
}

export function normalizeArchivePath(path: string): string {
  return path.replace(/^\.\//, '').replace(/\/+$/, '');
}

function invalid(message: string): ThinError {
  return new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${message}`);
}

const DIGEST_PATTERN = /^sha256:[0-9a-f]{64}$/;

function blobPath(digest: unknown, what: string): string {
  if (typeof digest !== 'string' || !DIGEST_PATTERN.test(digest)) throw invalid(`${what} has digest '${String(digest)}', not sha256:<64 hex digits>`);
  return `blobs/sha256/${digest.slice('sha256:'.length)}`;
}

function asObject(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid(`${what} is not a JSON object`);
  return value as Record<string, unknown>;
}

function diffIdsOf(config: unknown, configPath: string): string[] {
  const rootfs = asObject(asObject(config, `config ${configPath}`)['rootfs'], `rootfs of config ${configPath}`);
  const ids = rootfs['diff_ids'];
  if (!Array.isArray(ids) || ids.some((id) => typeof id !== 'string' || !DIGEST_PATTERN.test(id))) {
    throw invalid(`config ${configPath} has no list of sha256 rootfs.diff_ids`);
  }
  return ids as string[];
}

/** Reads a JSON file of the archive; undefined when the archive has no such file. */
export type JsonReader = (path: string) => Promise<{ value: unknown; bytes: Uint8Array } | undefined>;

const GO_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };

/** The image an archive holds: its layers in order with their diff_ids. */
export async function describeImageArchive(read: JsonReader): Promise<ImageDescription> {
  const manifest = await read('manifest.json');
  if (manifest !== undefined) return describeDockerSave(manifest.value, read);
  const index = await read('index.json');
  if (index !== undefined) return describeOciLayout(index.value, read);
  throw invalid('the archive looks like a container image but has neither manifest.json (docker save) nor index.json (OCI layout)');
}

async function describeDockerSave(manifest: unknown, read: JsonReader): Promise<ImageDescription> {
  if (!Array.isArray(manifest) || manifest.length === 0) throw invalid('manifest.json is not a list of images');
  if (manifest.length > 1) {
    const tags = manifest.map((item) => (asObject(item, 'a manifest.json entry')['RepoTags'] as string[] | undefined)?.join(',') ?? '?');
    throw invalid(`the archive holds ${manifest.length} images (${tags.join('; ')}); thinbd imports one image per volume (docker save one image)`);
  }
  const image = asObject(manifest[0], 'the manifest.json entry');
  const configPath = image['Config'];
  const layerPaths = image['Layers'];
  if (typeof configPath !== 'string' || !Array.isArray(layerPaths) || layerPaths.some((path) => typeof path !== 'string')) {
    throw invalid('manifest.json has no Config and Layers');
  }
  const config = await read(normalizeArchivePath(configPath));
  if (config === undefined) throw invalid(`manifest.json names config ${configPath}, which is not in the archive`);
  const diffIds = diffIdsOf(config.value, configPath);
  if (diffIds.length !== layerPaths.length) throw invalid(`manifest.json lists ${layerPaths.length} layers and the config ${diffIds.length} diff_ids`);
  const tags = Array.isArray(image['RepoTags']) ? (image['RepoTags'] as unknown[]).filter((tag): tag is string => typeof tag === 'string') : [];
  return {
    kind: 'docker',
    layers: (layerPaths as string[]).map((path, index) => ({ path: normalizeArchivePath(path), diffId: diffIds[index]! })),
    configDigest: `sha256:${createHash('sha256').update(config.bytes).digest('hex')}`,
    tags,
  };
}

async function describeOciLayout(index: unknown, read: JsonReader): Promise<ImageDescription> {
  let manifestDescriptor = pickManifest(asObject(index, 'index.json'), 'index.json');
  // An image index (multi-platform) nests: follow it to one platform's manifest.
  for (let depth = 0; depth < 4; depth++) {
    const mediaType = manifestDescriptor['mediaType'];
    const path = blobPath(manifestDescriptor['digest'], 'a manifest in index.json');
    const blob = await read(path);
    if (blob === undefined) throw invalid(`index.json names manifest ${String(manifestDescriptor['digest'])}, which is not in the archive`);
    const document = asObject(blob.value, `manifest ${path}`);
    const isIndex = mediaType === 'application/vnd.oci.image.index.v1+json' || mediaType === 'application/vnd.docker.distribution.manifest.list.v2+json' || Array.isArray(document['manifests']);
    if (isIndex) {
      manifestDescriptor = pickManifest(document, path);
      continue;
    }
    const configPath = blobPath(asObject(document['config'], `config of ${path}`)['digest'], `the config of ${path}`);
    const config = await read(configPath);
    if (config === undefined) throw invalid(`manifest ${path} names config ${configPath}, which is not in the archive`);
    const diffIds = diffIdsOf(config.value, configPath);
    const layers = document['layers'];
    if (!Array.isArray(layers)) throw invalid(`manifest ${path} has no layers`);
    if (layers.length !== diffIds.length) throw invalid(`manifest ${path} lists ${layers.length} layers and the config ${diffIds.length} diff_ids`);
    const annotations = asObject(manifestDescriptor['annotations'] ?? {}, 'annotations');
    const tag = annotations['org.opencontainers.image.ref.name'];
    return {
      kind: 'oci',
      layers: layers.map((layer, layerIndex) => ({ path: blobPath(asObject(layer, `layer ${layerIndex} of ${path}`)['digest'], `layer ${layerIndex} of ${path}`), diffId: diffIds[layerIndex]! })),
      configDigest: `sha256:${configPath.slice('blobs/sha256/'.length)}`,
      tags: typeof tag === 'string' ? [tag] : [],
    };
  }
  throw invalid('index.json nests image indexes too deep');
}

/** The one manifest of an index, or the one for this machine's platform. */
function pickManifest(index: Record<string, unknown>, where: string): Record<string, unknown> {
  const manifests = index['manifests'];
  if (!Array.isArray(manifests) || manifests.length === 0) throw invalid(`${where} lists no manifests`);
  const descriptors = manifests.map((item, position) => asObject(item, `manifest ${position} of ${where}`));
  if (descriptors.length === 1) return descriptors[0]!;
  const arch = GO_ARCH[process.arch] ?? process.arch;
  const forPlatform = descriptors.filter((item) => {
    const platform = item['platform'] as Record<string, unknown> | undefined;
    return platform !== undefined && platform['os'] === 'linux' && platform['architecture'] === arch;
  });
  if (forPlatform.length === 1) return forPlatform[0]!;
  throw invalid(`${where} lists ${descriptors.length} manifests and ${forPlatform.length} for linux/${arch}; thinbd imports one image per volume`);
}

/** OCI chain ids: layer n's is sha256 of "<chain id n-1> <diff id n>"; the first is its diff id. */
export function chainIds(diffIds: readonly string[]): string[] {
  const chain: string[] = [];
  for (const diffId of diffIds) {
    const previous = chain[chain.length - 1];
    chain.push(previous === undefined ? diffId : `sha256:${createHash('sha256').update(`${previous} ${diffId}`).digest('hex')}`);
  }
  return chain;
}
