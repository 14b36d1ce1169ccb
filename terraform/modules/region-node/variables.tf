# One region node, described by one region file (docs/regions.md) decoded with
# jsondecode(file(...)). Every rule below is checked at plan time, before anything starts,
# and every message names the file and the field.

variable "region_file" {
  description = "Path of the region file the region came from (used in error messages)."
  type        = string
}

variable "region" {
  description = "The region file's decoded object: jsondecode(file(region_file))."
  type        = any

  validation {
    condition     = can(keys(var.region))
    error_message = "${var.region_file}: -: not a JSON object (is the file valid JSON?)"
  }

  # Required fields.
  validation {
    condition     = try(length(setsubtract(["name", "display_name", "latency_group", "location", "bind_host", "public_host", "ports", "capacity", "cloud"], keys(var.region))) == 0, true)
    error_message = "${var.region_file}: ${try(join(", ", tolist(setsubtract(["name", "display_name", "latency_group", "location", "bind_host", "public_host", "ports", "capacity", "cloud"], keys(var.region)))), "-")}: missing field"
  }
  validation {
    condition = try(alltrue([
      for f in ["location.lat", "location.lon", "ports.http", "ports.game", "ports.beacon", "ports.mesh", "capacity.max_players", "capacity.max_matches", "cloud.provider", "cloud.region", "cloud.instance_type"] :
      !can(var.region[split(".", f)[0]]) || can(var.region[split(".", f)[0]][split(".", f)[1]])
    ]), false)
    error_message = "${var.region_file}: ${try(join(", ", [
      for f in ["location.lat", "location.lon", "ports.http", "ports.game", "ports.beacon", "ports.mesh", "capacity.max_players", "capacity.max_matches", "cloud.provider", "cloud.region", "cloud.instance_type"] :
      f if can(var.region[split(".", f)[0]]) && !can(var.region[split(".", f)[0]][split(".", f)[1]])
    ]), "-")}: missing field"
  }

  # Unknown fields are errors (as for the node's serde deny_unknown_fields).
  validation {
    condition = try(length(concat(
      tolist(setsubtract(keys(var.region), ["name", "display_name", "latency_group", "location", "bind_host", "public_host", "ports", "capacity", "cloud"])),
      [for k in try(keys(var.region.location), []) : "location.${k}" if !contains(["lat", "lon"], k)],
      [for k in try(keys(var.region.ports), []) : "ports.${k}" if !contains(["http", "game", "beacon", "mesh"], k)],
      [for k in try(keys(var.region.capacity), []) : "capacity.${k}" if !contains(["max_players", "max_matches"], k)],
      [for k in try(keys(var.region.cloud), []) : "cloud.${k}" if !contains(["provider", "region", "instance_type"], k)],
    )) == 0, true)
    error_message = "${var.region_file}: ${try(join(", ", concat(
      tolist(setsubtract(keys(var.region), ["name", "display_name", "latency_group", "location", "bind_host", "public_host", "ports", "capacity", "cloud"])),
      [for k in try(keys(var.region.location), []) : "location.${k}" if !contains(["lat", "lon"], k)],
      [for k in try(keys(var.region.ports), []) : "ports.${k}" if !contains(["http", "game", "beacon", "mesh"], k)],
      [for k in try(keys(var.region.capacity), []) : "capacity.${k}" if !contains(["max_players", "max_matches"], k)],
      [for k in try(keys(var.region.cloud), []) : "cloud.${k}" if !contains(["provider", "region", "instance_type"], k)],
    )), "-")}: unknown field"
  }

  validation {
    condition     = try(length(regexall("^[a-z0-9-]{1,32}$", var.region.name)) == 1, !can(var.region.name))
    error_message = "${var.region_file}: name: 1-32 characters of a-z, 0-9 and '-'"
  }
  validation {
    condition     = try(var.region.name == trimsuffix(basename(var.region_file), ".json"), true)
    error_message = "${var.region_file}: name: must match the file name (${trimsuffix(basename(var.region_file), ".json")})"
  }
  validation {
    condition     = try(trimspace(var.region.display_name) != "", !can(var.region.display_name))
    error_message = "${var.region_file}: display_name: must not be empty"
  }
  validation {
    condition     = try(length(var.region.latency_group) >= 0, !can(var.region.latency_group))
    error_message = "${var.region_file}: latency_group: must be a string"
  }
  validation {
    condition     = try(var.region.location.lat >= -90 && var.region.location.lat <= 90, !can(var.region.location.lat))
    error_message = "${var.region_file}: location.lat: must be within -90..=90"
  }
  validation {
    condition     = try(var.region.location.lon >= -180 && var.region.location.lon <= 180, !can(var.region.location.lon))
    error_message = "${var.region_file}: location.lon: must be within -180..=180"
  }
  validation {
    condition     = try(var.region.bind_host == null || can(cidrhost("${var.region.bind_host}/${strcontains(var.region.bind_host, ":") ? 128 : 32}", 0)), !can(var.region.bind_host))
    error_message = "${var.region_file}: bind_host: must be an IP address (127.0.0.1 locally, 0.0.0.0 in a cloud)"
  }
  validation {
    condition     = try(trimspace(var.region.public_host) != "" && !can(regex("[/ :]", var.region.public_host)), !can(var.region.public_host))
    error_message = "${var.region_file}: public_host: a host name or IP address without port, not empty"
  }
  validation {
    condition = try(alltrue([
      for k in ["http", "game", "beacon", "mesh"] :
      floor(var.region.ports[k]) == var.region.ports[k] && var.region.ports[k] >= 1024 && var.region.ports[k] <= 65535
      if can(var.region.ports[k])
    ]), false)
    error_message = "${var.region_file}: ${try(join(", ", [
      for k in ["http", "game", "beacon", "mesh"] : "ports.${k}"
      if can(var.region.ports[k]) && !try(floor(var.region.ports[k]) == var.region.ports[k] && var.region.ports[k] >= 1024 && var.region.ports[k] <= 65535, false)
    ]), "ports")}: must be an integer within 1024..=65535"
  }
  validation {
    condition     = try(length(distinct([for k in ["http", "game", "beacon", "mesh"] : var.region.ports[k]])) == 4, true)
    error_message = "${var.region_file}: ports: ports.http, ports.game, ports.beacon and ports.mesh must be distinct (${try(jsonencode(var.region.ports), "")})"
  }
  validation {
    condition     = try(floor(var.region.capacity.max_players) == var.region.capacity.max_players && var.region.capacity.max_players >= 1, !can(var.region.capacity.max_players))
    error_message = "${var.region_file}: capacity.max_players: must be an integer of at least 1"
  }
  validation {
    condition     = try(floor(var.region.capacity.max_matches) == var.region.capacity.max_matches && var.region.capacity.max_matches >= 0, !can(var.region.capacity.max_matches))
    error_message = "${var.region_file}: capacity.max_matches: must be an integer of at least 0"
  }
  validation {
    condition = try(alltrue([
      for k in ["provider", "region", "instance_type"] : trimspace(var.region.cloud[k]) != "" if can(var.region.cloud[k])
    ]), false)
    error_message = "${var.region_file}: cloud: provider, region and instance_type must be non-empty strings"
  }

  # Across the catalog: unique names, no port clash between regions on one host.
  validation {
    condition = try(length([
      for f, p in var.peers : f if try(p.name == var.region.name, false)
    ]) == 0, true)
    error_message = "${var.region_file}: name: duplicate region name ${try(var.region.name, "")} (also ${try(join(", ", [for f, p in var.peers : f if try(p.name == var.region.name, false)]), "")})"
  }
  validation {
    condition = try(length(flatten([
      for f, p in var.peers : [
        for k in ["http", "game", "beacon", "mesh"] : k
        if try(p.public_host == var.region.public_host || p.bind_host == var.region.bind_host, false) && contains([for pk in ["http", "game", "beacon", "mesh"] : try(p.ports[pk], -1)], try(var.region.ports[k], -2))
      ]
    ])) == 0, true)
    error_message = "${var.region_file}: ${try(join("; ", flatten([
      for f, p in var.peers : [
        for k in ["http", "game", "beacon", "mesh"] : "ports.${k}: ${var.region.ports[k]} clashes with ${f} on the same host"
        if try(p.public_host == var.region.public_host || p.bind_host == var.region.bind_host, false) && contains([for pk in ["http", "game", "beacon", "mesh"] : try(p.ports[pk], -1)], try(var.region.ports[k], -2))
      ]
    ])), "ports: clash")}"
  }
}

variable "peers" {
  description = "The other regions of the catalog: file name => decoded region (for the duplicate-name and port-clash checks)."
  type        = any
  default     = {}
}

variable "seeds" {
  description = "Mesh addresses (host:port) of the other regions; the node joins through them."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.seeds : can(regex("^[^/ ]+:[0-9]{1,5}$", s))])
    error_message = "${var.region_file}: seeds: every seed must be host:port (got ${jsonencode(var.seeds)})"
  }
}

variable "release_version" {
  description = "Meridian release this node runs; changing it replaces the node (see docs/operations.md, upgrade)."
  type        = string
  default     = "0.1.0"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+([-+][0-9A-Za-z.-]+)?$", var.release_version))
    error_message = "release_version: must be a semantic version such as 0.1.0"
  }
}

variable "meridian_bin" {
  description = "Path of the meridian binary (local runner)."
  type        = string
  default     = "meridian"

  validation {
    condition     = trimspace(var.meridian_bin) != ""
    error_message = "meridian_bin: must not be empty"
  }
}

variable "ca_dir" {
  description = "Cluster CA directory (ca.pem, ca.key) from `meridian certs init`."
  type        = string

  validation {
    condition     = trimspace(var.ca_dir) != ""
    error_message = "ca_dir: must not be empty"
  }
}

variable "data_dir" {
  description = "The node's data directory (store, certificates, log, pid file)."
  type        = string

  validation {
    condition     = trimspace(var.data_dir) != ""
    error_message = "data_dir: must not be empty"
  }
}

variable "regions_dir" {
  description = "The catalog directory the node reads (GET /regions lists it)."
  type        = string
}

variable "admin_token" {
  description = "Admin bearer token (16+ characters), or empty for none (/admin/* then answers 403)."
  type        = string
  default     = ""

  validation {
    condition     = var.admin_token == "" || length(var.admin_token) >= 16
    error_message = "admin_token: must be empty or at least 16 characters"
  }
}

variable "extra_env" {
  description = "More MERIDIAN_* settings for the node (docs/configuration.md), e.g. MERIDIAN_AUTH__SERVER_TOKENS."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.extra_env) : can(regex("^MERIDIAN_[A-Z0-9_]+$", k))])
    error_message = "extra_env: keys must be MERIDIAN_* variables"
  }
}

variable "run_local" {
  description = "Start the node on this machine (terraform_data + local-exec). False: only describe it (cloud targets use the outputs)."
  type        = bool
  default     = true
}

variable "ready_timeout_s" {
  description = "How long apply waits for GET /readyz before failing with the node's log tail."
  type        = number
  default     = 60

  validation {
    condition     = var.ready_timeout_s >= 1 && var.ready_timeout_s <= 600
    error_message = "ready_timeout_s: must be within 1..=600"
  }
}

variable "stop_timeout_s" {
  description = "How long destroy waits after SIGTERM (drain + graceful mesh leave) before SIGKILL."
  type        = number
  default     = 60
}

variable "cert_days" {
  description = "Validity of the node certificate issued at each start."
  type        = number
  default     = 365
}
