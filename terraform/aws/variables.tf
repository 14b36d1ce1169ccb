variable "regions_dir" {
  description = "The region catalog. For AWS, each file's bind_host is 0.0.0.0 and public_host is NAME.<domain>."
  type        = string
  default     = "../../regions"
}

variable "domain" {
  description = "DNS zone in Route 53 (e.g. play.example.com): NAME.<domain> per region, api.<domain> with latency routing."
  type        = string
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone id of var.domain."
  type        = string
}

variable "release_version" {
  description = "Meridian release the nodes run; changing it replaces the instances (one region at a time: see docs/operations.md)."
  type        = string
}

variable "release_url" {
  description = "Where instances download the meridian binary; %s is replaced by release_version, %a by the architecture (aarch64 or x86_64)."
  type        = string
}

variable "release_sha256" {
  description = "Expected SHA-256 of the downloaded binary per architecture (aarch64, x86_64)."
  type        = map(string)
}

variable "certs_dir" {
  description = "Local dir with the cluster CA's ca.pem and one node cert per region (meridian certs issue --node NAME --ca-dir CA --out certs_dir/NAME). Stored as SSM SecureString parameters."
  type        = string
  default     = "certs"
}

variable "admin_token" {
  description = "Admin bearer token (16+ characters)."
  type        = string
  sensitive   = true
}

variable "api_cidrs" {
  description = "Who may reach the HTTP API, game and beacon ports."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "ssh_key_name" {
  description = "EC2 key pair for SSH, or null (no SSH port is opened either way; use SSM Session Manager)."
  type        = string
  default     = null
}
