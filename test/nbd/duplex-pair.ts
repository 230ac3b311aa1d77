// Two in-memory streams wired back to back, like a socket pair: what one writes the other reads.
// Ending or destroying one side ends the other's readable side, as a TCP close would.
import { Duplex } from 'node:stream';

export function duplexPair(): [Duplex, Duplex] {
  const sides: Duplex[] = [];
  const ended = [false, false];
  const endPeer = (index: number) => {
    const peer = sides[1 - index]!;
    if (ended[1 - index] || peer.destroyed) return;
    ended[1 - index] = true;
    peer.push(null);
  };
  for (const index of [0, 1]) {
    sides.push(
      new Duplex({
        read() {},
        write(chunk: Buffer, _encoding, callback) {
          const peer = sides[1 - index]!;
          // A copy, as a socket would: the writer may reuse its buffer once the callback runs.
          if (!ended[1 - index] && !peer.destroyed) peer.push(Buffer.from(chunk));
          callback();
        },
        final(callback) {
          endPeer(index);
          callback();
        },
        destroy(error, callback) {
          endPeer(index);
          callback(error);
        },
      }),
    );
  }
  return [sides[0]!, sides[1]!];
}
