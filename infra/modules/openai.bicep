// A new Azure OpenAI account with a chat deployment (main.bicep: the model, version and SKU). Keys are off (disableLocalAuth):
// callers authenticate with Entra ID and need Cognitive Services OpenAI User (openai-access.bicep).
param name string
param location string
param tags object = {}
param deploymentName string
param modelName string
param modelVersion string
@description('Deployment SKU, for example Standard or GlobalStandard.')
param deploymentSkuName string
@description('Capacity in thousands of tokens per minute.')
@minValue(1)
param deploymentCapacity int

// API version as in Azure-Samples/azure-search-openai-demo (infra/core/ai/cognitiveservices.bicep).
resource account 'Microsoft.CognitiveServices/accounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'OpenAI'
  // checkov:skip=CKV_AZURE_134: the Flex Consumption app has no virtual network here and calls Azure OpenAI over its public endpoint; keys are off (disableLocalAuth), so callers need an Entra role
  identity: {
    type: 'SystemAssigned'
  }
  sku: {
    name: 'S0'
  }
  properties: {
    // Entra ID tokens are issued for a custom subdomain endpoint only.
    customSubDomainName: name
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
    }
  }
}

resource deployment 'Microsoft.CognitiveServices/accounts/deployments@2023-05-01' = {
  parent: account
  name: deploymentName
  sku: {
    name: deploymentSkuName
    capacity: deploymentCapacity
  }
  properties: {
    model: {
      format: 'OpenAI'
      name: modelName
      version: modelVersion
    }
  }
}

output name string = account.name
output endpoint string = account.properties.endpoint
output deploymentName string = deployment.name
