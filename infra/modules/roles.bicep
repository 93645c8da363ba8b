// Data-plane roles on the storage account and Application Insights, for the app's identity
// and, when a principal id is given, for the developer (so local runs against Azure work).
// Role definition ids are Azure's built-in ones (roles.json; tests/infra/test_infra.py checks them).
param storageAccountName string
param applicationInsightsName string
param identityPrincipalId string
@description('Developer (or CI) principal; empty for none.')
param developerPrincipalId string = ''
@allowed(['User', 'ServicePrincipal', 'Group'])
param developerPrincipalType string = 'User'

var role = loadJsonContent('roles.json')
var forDeveloper = !empty(developerPrincipalId)

resource storage 'Microsoft.Storage/storageAccounts@2023-01-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// API version as in Azure-Samples/functions-quickstart-python-http-azd (infra/app/rbac.bicep).

// The host keeps leases and keys in blobs and reads the deployment package from a container.
resource identityBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, role.StorageBlobDataOwner)
  scope: storage
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.StorageBlobDataOwner)
  }
}

// The queue triggers read and delete messages; the output bindings add them.
resource identityQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, role.StorageQueueDataContributor)
  scope: storage
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.StorageQueueDataContributor)
  }
}

// Application Insights has local auth off: publishing telemetry needs this role.
resource identityMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, identityPrincipalId, role.MonitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.MonitoringMetricsPublisher)
  }
}

resource developerBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (forDeveloper) {
  name: guid(storage.id, developerPrincipalId, role.StorageBlobDataOwner)
  scope: storage
  properties: {
    principalId: developerPrincipalId
    principalType: developerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.StorageBlobDataOwner)
  }
}

resource developerQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (forDeveloper) {
  name: guid(storage.id, developerPrincipalId, role.StorageQueueDataContributor)
  scope: storage
  properties: {
    principalId: developerPrincipalId
    principalType: developerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.StorageQueueDataContributor)
  }
}

resource developerMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (forDeveloper) {
  name: guid(applicationInsights.id, developerPrincipalId, role.MonitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    principalId: developerPrincipalId
    principalType: developerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.MonitoringMetricsPublisher)
  }
}
