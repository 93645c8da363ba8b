// Optional Event Grid custom topic for the completion_from_event_grid function. Access keys are
// off: publishers authenticate with Entra ID (EventGrid Data Sender). Events Event Grid cannot
// deliver are dead-lettered to a blob container, written with the topic's own identity, which
// may write to that container and nothing else. The subscription to the function is created
// after the code is deployed (eventgrid-subscription.bicep, run by infra/hooks/postdeploy.py):
// Event Grid checks that the function exists when the subscription is created.
param topicName string
param identityName string
param location string
param tags object = {}
param storageAccountName string
param deadLetterContainerName string
@description('Developer (or CI) principal allowed to publish events; empty for none.')
param developerPrincipalId string = ''
@allowed(['User', 'ServicePrincipal', 'Group'])
param developerPrincipalType string = 'User'

var role = loadJsonContent('roles.json')

// API version: learn.microsoft.com/azure/templates/microsoft.managedidentity/2023-01-31/userassignedidentities
resource deadLetterIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
  tags: tags
}

// API version: learn.microsoft.com/azure/templates/microsoft.eventgrid/2022-06-15/topics (the first
// GA version with disableLocalAuth, user-assigned identities and dead-lettering with an identity).
resource topic 'Microsoft.EventGrid/topics@2022-06-15' = {
  name: topicName
  location: location
  tags: tags
  // checkov:skip=CKV_AZURE_193: publishers reach the topic over its public endpoint; access keys are off, so publishing needs EventGrid Data Sender
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${deadLetterIdentity.id}': {}
    }
  }
  properties: {
    inputSchema: 'EventGridSchema'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-01-01' existing = {
  name: storageAccountName
}

resource blobServices 'Microsoft.Storage/storageAccounts/blobServices@2023-01-01' existing = {
  parent: storage
  name: 'default'
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-01-01' existing = {
  parent: blobServices
  name: deadLetterContainerName
}

resource deadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetterContainer.id, deadLetterIdentity.id, role.StorageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    principalId: deadLetterIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.StorageBlobDataContributor)
  }
}

resource developerSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(developerPrincipalId)) {
  name: guid(topic.id, developerPrincipalId, role.EventGridDataSender)
  scope: topic
  properties: {
    principalId: developerPrincipalId
    principalType: developerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.EventGridDataSender)
  }
}

output topicName string = topic.name
output endpoint string = topic.properties.endpoint
output deadLetterIdentityId string = deadLetterIdentity.id
