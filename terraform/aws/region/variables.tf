variable "regions" {
  description = "The catalog's regions placed in this module's AWS region: file stem => decoded file."
  type        = any
}

variable "all_regions" {
  description = "The whole catalog (seeds and the duplicate/clash checks)."
  type        = any
}

variable "regions_dir" {
  type = string
}

variable "domain" {
  type = string
}

variable "release_version" {
  type = string
}

variable "release_url" {
  type = string
}

variable "release_sha256" {
  type = map(string)
}

variable "certs_dir" {
  type = string
}

variable "admin_token" {
  type      = string
  sensitive = true
}

variable "api_cidrs" {
  type = list(string)
}

variable "mesh_cidrs" {
  type = list(string)
}

variable "ssh_key_name" {
  type    = string
  default = null
}

variable "ami_ssm_parameter" {
  description = "AMI per architecture (Amazon Linux 2023, from the public SSM parameters)."
  type        = map(string)
  default = {
    aarch64 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
    x86_64  = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
  }
}
