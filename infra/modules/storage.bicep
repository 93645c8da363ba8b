// The function app's storage: the host's own blobs and queues (AzureWebJobsStorage), the
// deployment package container, and the app's request/result queues. Shared keys are off:
// everything, the Functions host included, authenticates with Entra ID.
param name string
param location string
param tags object = {}
@description('Blob container the Flex Consumption app reads its deployment package from.')
param deploymentContainerName string
@description('Queues the app triggers on or writes to.')
param queueNames array
@description('Blob container Event Grid dead-letters undeliverable events to; empty for none.')
param deadLetterContainerName string = ''

// API version as in Azure-Samples/functions-quickstart-python-http-azd (infra/core/storage, commit 3dc075a).
resource storage 'Microsoft.Storage/storageAccounts@2023-01-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  // checkov:skip=CKV_AZURE_35: the Flex Consumption app has no virtual network here and reaches storage over its public endpoint; shared keys are off, so only Entra identities with data roles get in
  // checkov:skip=CKV_AZURE_59: as CKV_AZURE_35: public endpoint, Entra-only access
  // checkov:skip=CKV_AZURE_206: the account holds host leases, transient request/result queues and the deployment package; geo-replication adds cost and no recovery path the app uses
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    // The Flex Consumption app reaches storage over the public endpoint: no virtual network here.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

// Child resources at the top level with parent: pycep-parser reads conditions and loops only there.
resource blobServices 'Microsoft.Storage/storageAccounts/blobServices@2023-01-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-01-01' = {
  parent: blobServices
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-01-01' = if (!empty(deadLetterContainerName)) {
  parent: blobServices
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueServices 'Microsoft.Storage/storageAccounts/queueServices@2023-01-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-01-01' = [for queueName in queueNames: {
  parent: queueServices
  name: queueName
}]

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
