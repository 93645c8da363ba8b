// The user-assigned managed identity the function app runs as: it reads the deployment
// package, runs the host's storage (blobs, queues), publishes telemetry and calls Azure OpenAI.
param name string
param location string
param tags object = {}

// API version: learn.microsoft.com/azure/templates/microsoft.managedidentity/2023-01-31/userassignedidentities
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
