package dev.vmm.core.block;

import dev.vmm.iothread.IOThread;
import java.util.concurrent.CompletableFuture;

/**
 * Something that serves a block node's requests from the node's home IOThread (an NBD client,
 * a vhost-user-blk device) and follows the node when it moves to another IOThread. The handoff
 * ({@code Daemon.moveNode}) calls the steps in this order, each on the thread named:
 *
 * <ol>
 *   <li>{@link #quiesce()} on the old home: take no new requests; new ones wait where they are
 *       (a kick eventfd keeps its counter, a socket keeps its bytes).</li>
 *   <li>(drain: requests already taken complete on the old home)</li>
 *   <li>{@link #detach()} on the old home: leave its event loop.</li>
 *   <li>{@link #attach(IOThread)} on the new home: join its event loop.</li>
 *   <li>{@link #resume()} on the new home: take requests again and serve, once, whatever arrived
 *       during the move, so nothing waits for a new kick or new bytes.</li>
 * </ol>
 *
 * A user that disappears during a move (a client disconnects) completes its futures anyway;
 * adding a new kind of user never touches the handoff code.
 */
public interface NodeUser {
    /** For logs: what this user is ("NBD client 127.0.0.1:4242", "vhost-user-blk vub0"). */
    String describe();

    void quiesce();

    /** Completes once the user is out of the old loop (with or without error). */
    CompletableFuture<Void> detach();

    /** Completes once the user is registered on {@code newHome}'s loop (with or without error). */
    CompletableFuture<Void> attach(IOThread newHome);

    void resume();
}
