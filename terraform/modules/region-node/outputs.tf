output "name" {
  description = "Region name."
  value       = local.name
}

output "api_url" {
  description = "HTTP API base URL (clients, game servers, GET /regions)."
  value       = local.api_url
}

output "beacon" {
  description = "UDP beacon address (nearest-region pings)."
  value       = local.beacon
}

output "mesh" {
  description = "Mesh address (QUIC, mutual TLS), what other regions use as a seed."
  value       = local.mesh
}

output "game" {
  description = "Game traffic address (UDP)."
  value       = local.game
}

output "ports" {
  description = "The region's ports (what a firewall opens)."
  value       = local.ports
}

output "node_env" {
  description = "The node's MERIDIAN_* settings (cloud targets render them into the instance's environment)."
  value       = local.node_env
  sensitive   = true
}
