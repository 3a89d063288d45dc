package dev.vmm.nbd.server;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.linux.LibcSocket;
import io.netty.bootstrap.ServerBootstrap;
import io.netty.channel.Channel;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.MultiThreadIoEventLoopGroup;
import io.netty.channel.epoll.EpollDomainSocketChannel;
import io.netty.channel.epoll.EpollIoHandler;
import io.netty.channel.epoll.EpollServerDomainSocketChannel;
import io.netty.channel.unix.DomainSocketAddress;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * How log lines name a client on a unix socket: {@code pid=P,uid=U}, the form the vhost-user
 * listener uses for its front-ends ({@link LibcSocket#peerCredentials}), so one grep finds a
 * process in both (it was {@code unix:pid=P,uid=U} here).
 */
class NbdPeerNameTest {
    @TempDir Path tmp;

    @Test
    void aUnixSocketPeerIsNamedByPidAndUidAsTheVhostUserListenerNamesIt() throws Exception {
        var group = new MultiThreadIoEventLoopGroup(1, EpollIoHandler.newFactory());
        try {
            CompletableFuture<Channel> accepted = new CompletableFuture<>();
            Path sock = tmp.resolve("nbd.sock");
            Channel server = new ServerBootstrap().group(group).channel(EpollServerDomainSocketChannel.class)
                    .childHandler(new ChannelInitializer<Channel>() {
                        @Override
                        protected void initChannel(Channel ch) {
                            accepted.complete(ch);
                        }
                    }).bind(new DomainSocketAddress(sock.toString())).sync().channel();
            try (SocketChannel client = SocketChannel.open(UnixDomainSocketAddress.of(sock))) {
                Channel ch = accepted.get(5, TimeUnit.SECONDS);
                int uid = (Integer) Files.getAttribute(sock, "unix:uid");
                String expected = "pid=" + ProcessHandle.current().pid() + ",uid=" + uid;
                assertEquals(expected, NbdServer.describePeer(ch));
                assertEquals(LibcSocket.peerCredentials(((EpollDomainSocketChannel) ch).fd().intValue()), NbdServer.describePeer(ch));
            } finally {
                server.close().sync();
            }
        } finally {
            group.shutdownGracefully(0, 1, TimeUnit.SECONDS);
        }
    }
}
