import i18next from 'i18next';
import { initReactI18next } from 'react-i18next';
import en from './locales/en.json';
import fr from './locales/fr.json';

export const LANGUAGES = ['en', 'fr'] as const;
const STORAGE_KEY = 'peerbubble.console.language';

function initialLanguage(): string {
  const saved = localStorage.getItem(STORAGE_KEY);
  if (saved && (LANGUAGES as readonly string[]).includes(saved)) return saved;
  const browser = navigator.languages.find((l) => l.toLowerCase().startsWith('fr') || l.toLowerCase().startsWith('en'));
  return browser?.toLowerCase().startsWith('fr') ? 'fr' : 'en';
}

export function setLanguage(lang: string): void {
  localStorage.setItem(STORAGE_KEY, lang);
  void i18next.changeLanguage(lang);
  document.documentElement.lang = lang;
}

void i18next.use(initReactI18next).init({
  resources: { en: { translation: en }, fr: { translation: fr } },
  lng: initialLanguage(),
  fallbackLng: 'en',
  interpolation: { escapeValue: false },
});
document.documentElement.lang = i18next.language;

export default i18next;
