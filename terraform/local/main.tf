# Meridian on this machine: one `meridian up` per region file, using only what is built into
# Terraform (terraform_data + local-exec, no provider download). See README.md.

terraform {
  required_version = ">= 1.9"
}

locals {
  regions_dir = abspath(var.regions_dir)
  files       = sort(fileset(local.regions_dir, "*.json"))

  # file stem => decoded region file (null when it is not valid JSON: the module says so
  # naming the file). Keys are file names, so two files claiming one name cannot collide.
  regions = {
    for f in local.files : trimsuffix(f, ".json") => try(jsondecode(file("${local.regions_dir}/${f}")), null)
  }
  mesh_addrs = {
    for k, r in local.regions : k => "${r.public_host}:${r.ports.mesh}" if can("${r.public_host}:${r.ports.mesh}")
  }
}

module "region" {
  source   = "../modules/region-node"
  for_each = local.regions

  region_file = "${var.regions_dir}/${each.key}.json"
  region      = each.value
  peers       = { for k, r in local.regions : "${var.regions_dir}/${k}.json" => r if k != each.key }
  seeds       = [for k, a in local.mesh_addrs : a if k != each.key]

  release_version = var.release_version
  meridian_bin    = var.meridian_bin
  ca_dir          = var.ca_dir
  data_dir        = "${var.data_root}/${each.key}"
  regions_dir     = local.regions_dir
  admin_token     = var.admin_token
  extra_env       = var.extra_env
  ready_timeout_s = var.ready_timeout_s
  stop_timeout_s  = var.stop_timeout_s
}

check "catalog_not_empty" {
  assert {
    condition     = length(local.files) > 0
    error_message = "${var.regions_dir}: no *.json region files: nothing to run"
  }
}
