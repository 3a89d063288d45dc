package dev.vmm.nbd.driver;

import dev.vmm.nbd.client.NbdClient;
import io.netty.channel.Channel;

/**
 * One negotiated NBD connection: the channel in transmission and what the server said about the
 * export. Immutable after {@link Connector#open}, except that the channel moves between loops.
 *
 * @param channel    the connection, still carrying the handshake's {@link Connector.Bridge}
 * @param client     the blocking client that ran the handshake (usable in transmission for a
 *                   side connection, from a thread other than the channel's loop)
 * @param bridge     the handler that feeds {@code client}'s input stream
 * @param size       export size in bytes (NBD_INFO_EXPORT)
 * @param flags      transmission flags ({@code NBD_FLAG_*})
 * @param structured NBD_OPT_STRUCTURED_REPLY was acknowledged
 * @param metaContext the id of {@code base:allocation}, or -1 when the server did not select it
 * @param minBlock   NBD_INFO_BLOCK_SIZE minimum (1 when the server sent none)
 * @param preferredBlock NBD_INFO_BLOCK_SIZE preferred (4096 when none)
 * @param maxPayload NBD_INFO_BLOCK_SIZE maximum, capped at {@link Connector#DEFAULT_MAX_PAYLOAD}
 */
record Session(Channel channel, NbdClient client, Connector.Bridge bridge, long size, int flags, boolean structured,
        long metaContext, int minBlock, int preferredBlock, int maxPayload) {
    boolean has(int flag) {
        return (flags & flag) != 0;
    }

    /** Drops the connection without NBD_CMD_DISC. Any thread. */
    void abort() {
        channel.close();
    }
}
