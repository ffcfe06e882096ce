"""What the bridge, the agent side and the Ansible collection share: credentials files, token
shape, the worker-id rule, default host paths, config files, models, exit codes, errors, the tool
catalog and who may call which tool. Imports neither `s2_bridge.server` nor `s2_bridge.agent`."""
