/**
 * A small blocking NBD client: fixed-newstyle handshake, {@code NBD_OPT_GO}, and transmission
 * with simple, structured or extended replies. It is what the {@code vmm demo} reads the
 * guest's writes back with, and what the tests drive the server with (the test-jar's
 * {@code NbdTestClient} extends it with malformed-input and TLS helpers).
 *
 * <p>Thread contract: see {@link dev.vmm.nbd.client.NbdClient}.
 */
package dev.vmm.nbd.client;
