// The one shape of a finding about a pool, shared by check (what is wrong) and repair (what could
// not be carried over): the place, and a sentence that names the value.
export interface Problem {
  /** Where: "superblock", "metadata block 17", "volume web (id 3), mapping leaf 812, blocks [40, 48)", … */
  where: string;
  message: string;
}
