// Test block files extend src/io's forwarding file; it is imported from here, beside them.
export { ForwardingBlockFile } from '../../src/io/forwarding.ts';
