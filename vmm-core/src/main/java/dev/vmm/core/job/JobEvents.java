package dev.vmm.core.job;

import java.util.Map;

/**
 * Where jobs send their QMP events ({@code QmpServer::emit} in the daemon, a list in tests).
 * Thread contract: called from any thread, under the job's monitor; MUST NOT block.
 */
@FunctionalInterface
public interface JobEvents {
    void emit(String event, Map<String, Object> data);
}
