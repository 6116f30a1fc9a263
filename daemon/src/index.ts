export { loadConfig, ConfigError, DEFAULT_CONFIG_YAML, type FerryConfig, type ConfigSources } from './config.js'
export { startDaemon, type RunningDaemon, type DaemonOptions } from './daemon.js'
export { hostsToml, writeHostsTomls, type HostsTomlEntry } from './hosts-toml.js'
export { main } from './cli.js'
