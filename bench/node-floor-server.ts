// The floor for an NBD server written for Node: a raw file served with the least work a Node
// server can do per request — parse the header, one synchronous pread/pwrite/fdatasync on the main
// thread, one socket write of a simple reply. No thin provisioning, no metadata, no locks, no
// budgets, no crash safety. The peer benchmark runs it beside thinbd (`--servers ...,node-floor`)
// to separate the cost of the runtime (event loop, socket streams, the JavaScript/C++ boundary)
// from the cost of thinbd's own request path: on a serial workload such as the ext4 fsync loop,
// nbdkit file is ahead of both by what a request costs in Node.
//
//   node --import tsx bench/node-floor-server.ts SOCKET FILE    (any export name is this file)
//
// It speaks the fixed newstyle handshake with NBD_OPT_GO / NBD_OPT_INFO / NBD_OPT_EXPORT_NAME
// (every other option is answered NBD_REP_ERR_UNSUP, so clients fall back to simple replies) and
// READ, WRITE, FLUSH and DISC. Like thinbd and nbdkit file it offers CAN_MULTI_CONN: one
// fdatasync of the one file covers writes from every connection.
import fs from 'node:fs';
import net from 'node:net';
import {
  IHAVEOPT,
  NBDMAGIC,
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_EINVAL,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_SEND_FLUSH,
  NBD_INFO_EXPORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
} from '../src/nbd/protocol.ts';

const [socketPath, filePath] = process.argv.slice(2);
if (socketPath === undefined || filePath === undefined) {
  console.error('usage: node-floor-server.ts SOCKET FILE');
  process.exit(2);
}
const fd = fs.openSync(filePath, 'r+');
const sizeBytes = fs.fstatSync(fd).size;
const TRANSMISSION_FLAGS = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN;
const REQUEST_HEADER_BYTES = 28;
const OPTION_HEADER_BYTES = 16;
const SIMPLE_REPLY_BYTES = 16;

function optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const reply = Buffer.alloc(20 + data.length);
  reply.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  reply.writeUInt32BE(option, 8);
  reply.writeUInt32BE(type, 12);
  reply.writeUInt32BE(data.length, 16);
  data.copy(reply, 20);
  return reply;
}

function serve(socket: net.Socket): void {
  socket.setNoDelay(true);
  socket.on('error', () => socket.destroy());
  const greeting = Buffer.alloc(18);
  greeting.writeBigUInt64BE(NBDMAGIC, 0);
  greeting.writeBigUInt64BE(IHAVEOPT, 8);
  greeting.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
  socket.write(greeting);

  // Received bytes not yet parsed: chunks joined only when a message spans them.
  let chunks: Buffer[] = [];
  let queuedBytes = 0;
  const peek = (count: number): Buffer | undefined => {
    if (queuedBytes < count) return undefined;
    if (count === 0) return Buffer.alloc(0);
    if (chunks[0]!.length < count) chunks = [Buffer.concat(chunks)];
    return chunks[0]!.subarray(0, count);
  };
  const take = (count: number): Buffer | undefined => {
    const bytes = peek(count);
    if (bytes === undefined || count === 0) return bytes;
    const head = chunks[0]!;
    if (head.length === count) chunks.shift();
    else chunks[0] = head.subarray(count);
    queuedBytes -= count;
    return bytes;
  };

  let phase: 'clientFlags' | 'options' | 'requests' = 'clientFlags';
  let noZeroes = false;
  const parse = (): void => {
    for (;;) {
      if (phase === 'clientFlags') {
        const flags = take(4);
        if (flags === undefined) return;
        noZeroes = (flags.readUInt32BE(0) & NBD_FLAG_NO_ZEROES) !== 0;
        phase = 'options';
      } else if (phase === 'options') {
        const header = peek(OPTION_HEADER_BYTES);
        if (header === undefined) return;
        const option = header.readUInt32BE(8);
        const dataBytes = header.readUInt32BE(12);
        if (take(OPTION_HEADER_BYTES + dataBytes) === undefined) return;
        if (option === NBD_OPT_EXPORT_NAME) {
          const reply = Buffer.alloc(noZeroes ? 10 : 134);
          reply.writeBigUInt64BE(BigInt(sizeBytes), 0);
          reply.writeUInt16BE(TRANSMISSION_FLAGS, 8);
          socket.write(reply);
          phase = 'requests';
        } else if (option === NBD_OPT_GO || option === NBD_OPT_INFO) {
          const info = Buffer.alloc(12);
          info.writeUInt16BE(NBD_INFO_EXPORT, 0);
          info.writeBigUInt64BE(BigInt(sizeBytes), 2);
          info.writeUInt16BE(TRANSMISSION_FLAGS, 10);
          socket.write(Buffer.concat([optionReply(option, NBD_REP_INFO, info), optionReply(option, NBD_REP_ACK)]));
          if (option === NBD_OPT_GO) phase = 'requests';
        } else {
          socket.write(optionReply(option, NBD_REP_ERR_UNSUP));
        }
      } else {
        const header = peek(REQUEST_HEADER_BYTES);
        if (header === undefined) return;
        const type = header.readUInt16BE(6);
        const offsetBytes = Number(header.readBigUInt64BE(16));
        const lengthBytes = header.readUInt32BE(24);
        if (type === NBD_CMD_WRITE && queuedBytes < REQUEST_HEADER_BYTES + lengthBytes) return;
        const reply = Buffer.alloc(SIMPLE_REPLY_BYTES + (type === NBD_CMD_READ ? lengthBytes : 0));
        reply.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
        header.copy(reply, 8, 8, 16); // the cookie
        take(REQUEST_HEADER_BYTES);
        if (type === NBD_CMD_READ) fs.readSync(fd, reply, SIMPLE_REPLY_BYTES, lengthBytes, offsetBytes);
        else if (type === NBD_CMD_WRITE) fs.writeSync(fd, take(lengthBytes)!, 0, lengthBytes, offsetBytes);
        else if (type === NBD_CMD_FLUSH) fs.fdatasyncSync(fd);
        else if (type === NBD_CMD_DISC) return void socket.end();
        else reply.writeUInt32BE(NBD_EINVAL, 4);
        socket.write(reply);
      }
    }
  };
  socket.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    queuedBytes += chunk.length;
    parse();
  });
}

const server = net.createServer(serve);
server.listen(socketPath);
process.on('SIGTERM', () => {
  server.close();
  process.exit(0);
});
