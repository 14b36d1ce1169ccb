variable "regions_dir" {
  description = "The region catalog (one JSON file per region), relative to this directory or absolute."
  type        = string
  default     = "../../regions"
}

variable "meridian_bin" {
  description = "The meridian binary."
  type        = string
  default     = "../../target/release/meridian"
}

variable "ca_dir" {
  description = "Cluster CA directory (create it with: meridian certs init --dir terraform/local/run/ca)."
  type        = string
  default     = "run/ca"
}

variable "data_root" {
  description = "Each node's data dir is data_root/REGION (store, certs, node.log, node.pid)."
  type        = string
  default     = "run"
}

variable "release_version" {
  description = "Release the nodes run; changing it restarts them (see docs/operations.md for a rolling upgrade)."
  type        = string
  default     = "0.1.0"
}

variable "admin_token" {
  description = "Admin bearer token for /admin/* (16+ characters), or empty."
  type        = string
  default     = ""
}

variable "extra_env" {
  description = "More MERIDIAN_* settings for every node."
  type        = map(string)
  default     = {}
}

variable "ready_timeout_s" {
  description = "How long apply waits for a node's /readyz."
  type        = number
  default     = 60
}

variable "stop_timeout_s" {
  description = "How long a stop waits after SIGTERM before SIGKILL."
  type        = number
  default     = 60
}
