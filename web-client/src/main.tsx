import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import './i18n';
import './styles.css';
import { App, Insecure } from './App';
import { WorkerClient } from './client';

const root = document.getElementById('root');
if (root) {
  createRoot(root).render(
    <StrictMode>
      {window.isSecureContext ? <App client={new WorkerClient()} /> : <Insecure />}
    </StrictMode>,
  );
}
