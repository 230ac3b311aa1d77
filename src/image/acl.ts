// POSIX ACLs written by GNU tar --acls (pax records SCHILY.acl.access and SCHILY.acl.default, in
// the text form "user::rw-\nuser:bob:rw-\ngroup::r--\nmask::rw-\nother::r--") become the
// system.posix_acl_* attributes the kernel reads (the VFS form; xattr.ts stores them as ext4's).
// Names are resolved as `tar -x` resolves them, through this host's /etc/passwd and /etc/group;
// numeric ids are taken as they are.
import fs from 'node:fs';

const TAGS: Record<string, { tag: number; qualified: number }> = {
  user: { tag: 0x01, qualified: 0x02 },
  u: { tag: 0x01, qualified: 0x02 },
  group: { tag: 0x04, qualified: 0x08 },
  g: { tag: 0x04, qualified: 0x08 },
  mask: { tag: 0x10, qualified: 0x10 },
  m: { tag: 0x10, qualified: 0x10 },
  other: { tag: 0x20, qualified: 0x20 },
  o: { tag: 0x20, qualified: 0x20 },
};

const NO_ID = 0xffffffff;

/** name -> id from the host's /etc/passwd and /etc/group (read when an ACL names someone: rare). */
function hostIdsOf(): { users: Map<string, number>; groups: Map<string, number> } {
  const read = (file: string): Map<string, number> => {
    const ids = new Map<string, number>();
    let text = '';
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      return ids;
    }
    for (const line of text.split('\n')) {
      const fields = line.split(':');
      if (fields.length >= 3 && /^\d+$/.test(fields[2]!)) ids.set(fields[0]!, Number(fields[2]));
    }
    return ids;
  };
  return { users: read('/etc/passwd'), groups: read('/etc/group') };
}

/** The VFS xattr value (version 2) for an ACL in text form, or why it cannot be read. */
export function aclTextToXattr(text: string): Uint8Array | string {
  const entries: Array<{ tag: number; perm: number; id: number }> = [];
  for (const raw of text.split(/[\n,]/)) {
    const line = raw.replace(/#.*$/, '').trim();
    if (line === '') continue;
    const fields = line.split(':');
    const kind = TAGS[fields[0]!];
    if (kind === undefined || fields.length < 3 || fields.length > 4) return `'${line}' is not an ACL entry`;
    const qualifier = fields[1]!;
    const perms = fields[2]!;
    if (!/^[r-][w-][x-]$/.test(perms)) return `'${line}' has permissions '${perms}', not rwx`;
    const perm = (perms[0] === 'r' ? 4 : 0) | (perms[1] === 'w' ? 2 : 0) | (perms[2] === 'x' ? 1 : 0);
    if (qualifier === '') {
      entries.push({ tag: kind.tag, perm, id: NO_ID });
      continue;
    }
    if (kind.tag !== 0x01 && kind.tag !== 0x04) return `'${line}' qualifies an entry that takes no name`;
    // star's form carries the numeric id as a fourth field.
    let id = fields.length === 4 && /^\d+$/.test(fields[3]!) ? Number(fields[3]) : undefined;
    if (id === undefined && /^\d+$/.test(qualifier)) id = Number(qualifier);
    if (id === undefined) {
      const ids = hostIdsOf();
      id = (kind.tag === 0x01 ? ids.users : ids.groups).get(qualifier);
      if (id === undefined) return `'${line}' names ${kind.tag === 0x01 ? 'user' : 'group'} '${qualifier}', which this host does not know (tar -x resolves ACL names the same way)`;
    }
    if (id > 0xfffffffe) return `'${line}' has an id beyond 32 bits`;
    entries.push({ tag: kind.qualified, perm, id });
  }
  // The kernel wants entries in tag order, named ones by id.
  entries.sort((a, b) => a.tag - b.tag || a.id - b.id);
  const value = new Uint8Array(4 + entries.length * 8);
  const view = new DataView(value.buffer);
  view.setUint32(0, 2, true);
  entries.forEach((entry, index) => {
    view.setUint16(4 + index * 8, entry.tag, true);
    view.setUint16(6 + index * 8, entry.perm, true);
    view.setUint32(8 + index * 8, entry.id, true);
  });
  return value;
}
