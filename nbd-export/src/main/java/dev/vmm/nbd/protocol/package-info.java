/**
 * NBD wire constants, one final holder class per family, named and valued exactly as in the
 * NBD protocol specification (<a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md">doc/proto.md</a>, with extended headers), in
 * spec order. All multi-byte fields on the wire are big-endian (network byte order).
 *
 * <p>Each holder has a {@code name(int)} for log lines; values the spec does not define
 * decode to e.g. {@code "NBD_OPT_UNKNOWN(42)"} rather than throwing, so the caller can answer
 * with the spec's error ({@code NBD_REP_ERR_UNSUP}, {@code NBD_EINVAL}).
 *
 * <p>Thread contract: constants and pure functions only; usable from any thread.
 *
 * <p>Pure constants: no state, callable from any thread.
 */
package dev.vmm.nbd.protocol;
