"""Release and repair: free ports no container holds, re-create held ones the xPU lost, recover."""
