# Kernel Gateway settings for an enclave-tools sandbox.  The token comes from the
# environment (KG_AUTH_TOKEN), never from the command line.
c = get_config()  # noqa: F821

c.KernelGatewayApp.ip = "0.0.0.0"  # inside the container; the host publishes on 127.0.0.1
c.KernelGatewayApp.port = 8888
c.KernelGatewayApp.port_retries = 0  # a busy port is an error, never a silent other port
c.KernelGatewayApp.max_kernels = 2  # one in use, one during a replacement
c.KernelGatewayApp.default_kernel_name = "python3"
c.KernelGatewayApp.force_kernel_name = "python3"
c.KernelGatewayApp.log_level = "WARN"

# A dead kernel is noticed within half a second, not the default three.
c.KernelRestarter.time_to_dead = 0.5
c.KernelManager.shutdown_wait_time = 2.0

# The host caps what it keeps; the gateway's own rate limit is the backstop that keeps a
# flood from ever reaching the host (it drops stream output above the rate, with a notice).
c.ZMQChannelsWebsocketConnection.iopub_data_rate_limit = 10_000_000
c.ZMQChannelsWebsocketConnection.iopub_msg_rate_limit = 5_000
c.ZMQChannelsWebsocketConnection.rate_limit_window = 3.0

# The kernel inherits only the variables enclave_gateway names (never KG_AUTH_TOKEN);
# the first kernel is the one enclave_gateway started before the gateway's imports.
from enclave_gateway import kernel_env_names  # noqa: E402

c.KernelGatewayApp.env_process_whitelist = kernel_env_names()
c.KernelGatewayApp.kernel_manager_class = "enclave_gateway.QuietActivityKernelManager"
c.KernelGatewayApp.kernel_spec_manager_class = "enclave_gateway.EnclaveKernelSpecManager"
c.SeedingMappingKernelManager.kernel_manager_class = "enclave_gateway.PrestartedKernelManager"
c.KernelGatewayApp.kernel_websocket_connection_class = "enclave_gateway.NoDelayChannelsConnection"
