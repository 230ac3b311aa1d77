// A small seeded pseudo-random generator for the simulator: xoshiro128** (Blackman and Vigna),
// seeded through splitmix32 so that nearby seeds give unrelated streams. Everything random in a
// simulation comes from one of these, so a seed replays a run exactly.

/** Mixes numbers into one 32-bit seed: derives the seed of a crash point or a variant from the run's seed. */
export function mixSeed(...parts: number[]): number {
  let state = 0x9e3779b9;
  for (const part of parts) {
    // Fold in both halves so seeds above 2^32 still matter.
    state = splitmix32(state ^ (part >>> 0));
    state = splitmix32(state ^ Math.floor(part / 2 ** 32));
  }
  return state >>> 0;
}

function splitmix32(value: number): number {
  let z = (value + 0x9e3779b9) | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

export class Rng {
  readonly seed: number;
  #s0: number;
  #s1: number;
  #s2: number;
  #s3: number;

  constructor(seed: number) {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`seed must be a non-negative integer, not ${seed}`);
    this.seed = seed;
    let state = mixSeed(seed);
    const draw = (): number => {
      state = (state + 0x9e3779b9) >>> 0;
      return splitmix32(state);
    };
    this.#s0 = draw();
    this.#s1 = draw();
    this.#s2 = draw();
    this.#s3 = draw();
    if ((this.#s0 | this.#s1 | this.#s2 | this.#s3) === 0) this.#s0 = 1;
  }

  /** A uniform 32-bit unsigned integer. */
  next(): number {
    const result = Math.imul(rotl(Math.imul(this.#s1, 5), 7), 9) >>> 0;
    const t = this.#s1 << 9;
    this.#s2 ^= this.#s0;
    this.#s3 ^= this.#s1;
    this.#s1 ^= this.#s2;
    this.#s0 ^= this.#s3;
    this.#s2 ^= t;
    this.#s3 = rotl(this.#s3, 11);
    return result;
  }

  /** A uniform integer in [0, n). */
  int(n: number): number {
    if (!Number.isSafeInteger(n) || n <= 0) throw new RangeError(`int(n) needs a positive integer, not ${n}`);
    if (n <= 2 ** 32) {
      // Rejection sampling: no modulo bias.
      const limit = 2 ** 32 - (2 ** 32 % n);
      for (;;) {
        const value = this.next();
        if (value < limit) return value % n;
      }
    }
    return Math.floor(this.float() * n);
  }

  /** A uniform integer in [begin, end). */
  range(begin: number, end: number): number {
    return begin + this.int(end - begin);
  }

  /** A uniform float in [0, 1) with 53 random bits. */
  float(): number {
    const high = this.next() >>> 5;
    const low = this.next() >>> 6;
    return (high * 67108864 + low) / 9007199254740992;
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('pick() from an empty list');
    return items[this.int(items.length)] as T;
  }

  /** Fills target with random bytes and returns it. */
  fill(target: Uint8Array): Uint8Array {
    let index = 0;
    while (index + 4 <= target.length) {
      const value = this.next();
      target[index] = value & 0xff;
      target[index + 1] = (value >>> 8) & 0xff;
      target[index + 2] = (value >>> 16) & 0xff;
      target[index + 3] = value >>> 24;
      index += 4;
    }
    if (index < target.length) {
      let value = this.next();
      for (; index < target.length; index++) {
        target[index] = value & 0xff;
        value >>>= 8;
      }
    }
    return target;
  }

  bytes(lengthBytes: number): Uint8Array {
    return this.fill(new Uint8Array(lengthBytes));
  }

  shuffle<T>(items: T[]): T[] {
    for (let index = items.length - 1; index > 0; index--) {
      const other = this.int(index + 1);
      const swap = items[index] as T;
      items[index] = items[other] as T;
      items[other] = swap;
    }
    return items;
  }

  /** An independent generator derived from this one's seed and a label: stable however much this one has drawn. */
  derive(...parts: number[]): Rng {
    return new Rng(mixSeed(this.seed, ...parts));
  }
}

function rotl(value: number, bits: number): number {
  return ((value << bits) | (value >>> (32 - bits))) >>> 0;
}

/**
 * The seed a test runs with: THINBD_SEED from the environment when set (to replay a failure),
 * otherwise the test's default.
 */
export function seedFromEnv(defaultSeed: number): number {
  const text = process.env['THINBD_SEED'];
  if (text === undefined || text === '') return defaultSeed;
  const seed = Number(text);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`THINBD_SEED must be a non-negative integer, not ${text}`);
  return seed;
}

/** Runs body; on failure, prefixes the error's message with the seed that replays it. */
export async function withSeed<T>(seed: number, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (error) {
    if (error instanceof Error && !error.message.includes(`seed=${seed}`)) {
      error.message = `seed=${seed} (replay: THINBD_SEED=${seed}): ${error.message}`;
    }
    throw error;
  }
}
