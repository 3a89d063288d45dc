package dev.vmm.core.testing;

import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The {@code --export} options tests give a daemon, in one place (the export driver itself lives
 * in virtio-blk and is found by the daemon at run time). Thread contract: any thread (values only).
 */
public final class TestExports {
    private TestExports() {}

    /** {@code --export type=vhost-user-blk,id=ID,node-name=NODE,addr.type=unix,addr.path=PATH,writable=..,iothread=iot0,num-queues=N}. */
    public static Options vhostUserBlk(String id, String node, String path, boolean writable, int queues) throws OptionException {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("type", "vhost-user-blk");
        m.put("id", id);
        m.put("node-name", node);
        m.put("addr", Map.of("type", "unix", "path", path));
        m.put("writable", writable);
        m.put("iothread", "iot0");
        m.put("num-queues", queues);
        return Options.of("--export", m);
    }
}
