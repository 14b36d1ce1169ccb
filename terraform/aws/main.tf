# Meridian on AWS: per region file, one EC2 instance in that file's cloud.region, a security
# group opening exactly its API, game, beacon and mesh ports, an Elastic IP, NAME.<domain>,
# and api.<domain> with Route 53 latency-based routing (health-checked on /readyz) so clients
# reach the nearest healthy region by default.
#
# Terraform cannot for_each over providers, so each AWS region used by the catalog has one
# provider alias and one module call below; a region file naming another AWS region fails
# the plan (check "aws_regions_supported") until both are added. Not applied in this
# repository's CI: see README.md.

locals {
  regions_dir = abspath(var.regions_dir)
  regions = {
    for f in fileset(local.regions_dir, "*.json") : trimsuffix(f, ".json") => jsondecode(file("${local.regions_dir}/${f}"))
  }
  supported_aws_regions = ["eu-west-1", "us-east-1", "ap-south-1"]

  by_aws_region = {
    for aws_region in local.supported_aws_regions : aws_region => {
      for k, r in local.regions : k => r if r.cloud.region == aws_region
    }
  }
  # Every node's public address, for the mesh ingress rules (mesh traffic is mutual TLS with
  # the cluster CA as well).
  mesh_cidrs = [for ip in concat(module.eu_west_1.public_ips, module.us_east_1.public_ips, module.ap_south_1.public_ips) : "${ip}/32"]
}

check "aws_regions_supported" {
  assert {
    condition     = alltrue([for r in local.regions : contains(local.supported_aws_regions, r.cloud.region) && r.cloud.provider == "aws"])
    error_message = "regions with a cloud.region that has no provider alias here: ${join(", ", [for k, r in local.regions : "${k}.json (cloud.region ${r.cloud.region})" if !contains(local.supported_aws_regions, r.cloud.region)])}; add a provider block and a module call in terraform/aws/main.tf"
  }
}

provider "aws" {
  region = "us-east-1" # Route 53 is global; its records are created through this one.
}

provider "aws" {
  alias  = "eu_west_1"
  region = "eu-west-1"
}

provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"
}

provider "aws" {
  alias  = "ap_south_1"
  region = "ap-south-1"
}

module "eu_west_1" {
  source          = "./region"
  providers       = { aws = aws.eu_west_1 }
  regions         = local.by_aws_region["eu-west-1"]
  all_regions     = local.regions
  regions_dir     = local.regions_dir
  domain          = var.domain
  release_version = var.release_version
  release_url     = var.release_url
  release_sha256  = var.release_sha256
  certs_dir       = var.certs_dir
  admin_token     = var.admin_token
  api_cidrs       = var.api_cidrs
  mesh_cidrs      = local.mesh_cidrs
  ssh_key_name    = var.ssh_key_name
}

module "us_east_1" {
  source          = "./region"
  providers       = { aws = aws.us_east_1 }
  regions         = local.by_aws_region["us-east-1"]
  all_regions     = local.regions
  regions_dir     = local.regions_dir
  domain          = var.domain
  release_version = var.release_version
  release_url     = var.release_url
  release_sha256  = var.release_sha256
  certs_dir       = var.certs_dir
  admin_token     = var.admin_token
  api_cidrs       = var.api_cidrs
  mesh_cidrs      = local.mesh_cidrs
  ssh_key_name    = var.ssh_key_name
}

module "ap_south_1" {
  source          = "./region"
  providers       = { aws = aws.ap_south_1 }
  regions         = local.by_aws_region["ap-south-1"]
  all_regions     = local.regions
  regions_dir     = local.regions_dir
  domain          = var.domain
  release_version = var.release_version
  release_url     = var.release_url
  release_sha256  = var.release_sha256
  certs_dir       = var.certs_dir
  admin_token     = var.admin_token
  api_cidrs       = var.api_cidrs
  mesh_cidrs      = local.mesh_cidrs
  ssh_key_name    = var.ssh_key_name
}

locals {
  nodes = merge(module.eu_west_1.nodes, module.us_east_1.nodes, module.ap_south_1.nodes)
}

# NAME.<domain>: what the region file's public_host says (clients, seeds, beacons).
resource "aws_route53_record" "node" {
  for_each = local.nodes
  zone_id  = var.route53_zone_id
  name     = "${each.key}.${var.domain}"
  type     = "A"
  ttl      = 60
  records  = [each.value.public_ip]
}

resource "aws_route53_health_check" "node" {
  for_each          = local.nodes
  ip_address        = each.value.public_ip
  port              = each.value.http_port
  type              = "HTTP"
  resource_path     = "/readyz"
  failure_threshold = 2
  request_interval  = 10
  tags              = { Name = "meridian-${each.key}" }
}

# api.<domain>: latency-based routing to the nearest healthy region. A draining node answers
# /readyz with 503, so Route 53 stops sending new clients to it before it stops.
resource "aws_route53_record" "api" {
  for_each        = local.nodes
  zone_id         = var.route53_zone_id
  name            = "api.${var.domain}"
  type            = "A"
  ttl             = 60
  records         = [each.value.public_ip]
  set_identifier  = each.key
  health_check_id = aws_route53_health_check.node[each.key].id

  latency_routing_policy {
    region = each.value.aws_region
  }
}
